import pytest

from kubelearn import HParams


def test_attribute_access_and_values():
    hp = HParams(learning_rate=0.1, hidden=[64, 32], name="x", flag=True)
    assert hp.learning_rate == 0.1
    assert hp.hidden == [64, 32]
    assert hp.values() == {"learning_rate": 0.1, "hidden": [64, 32], "name": "x", "flag": True}


def test_parse_overrides_in_place_and_returns_self():
    hp = HParams(learning_rate=0.1, hidden=[64, 32])
    assert hp.parse("learning_rate=0.3,hidden=[128,64]") is hp
    assert hp.learning_rate == 0.3
    assert hp.hidden == [128, 64]


def test_int_may_set_float_but_float_never_int():
    hp = HParams(lr=0.1, steps=10)
    hp.parse("lr=1")
    assert hp.lr == 1.0 and isinstance(hp.lr, float)
    with pytest.raises(ValueError, match="steps"):
        hp.parse("steps=1.5")
    hp.set_hparam("lr", 3)
    assert isinstance(hp.lr, float)
    with pytest.raises(ValueError, match="steps"):
        hp.set_hparam("steps", 2.5)


def test_bool_only_from_bool():
    hp = HParams(flag=False, n=1)
    hp.parse("flag=true")
    assert hp.flag is True
    with pytest.raises(ValueError, match="flag"):
        hp.set_hparam("flag", 1)
    with pytest.raises(ValueError, match="n"):
        hp.set_hparam("n", True)
    with pytest.raises(ValueError, match="flag"):
        hp.parse("flag=maybe")


def test_list_stays_list_of_same_type():
    hp = HParams(hidden=[1, 2])
    with pytest.raises(ValueError, match="hidden"):
        hp.parse("hidden=[1.5,2]")
    with pytest.raises(ValueError, match="hidden"):
        hp.set_hparam("hidden", 3)
    hp.parse("hidden[1]=7")
    assert hp.hidden == [1, 7]
    single = HParams(lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        single.set_hparam("lr", [0.1, 0.2])


def test_unknown_name_keyerror_from_set_valueerror_from_parse():
    hp = HParams(lr=0.1)
    with pytest.raises(KeyError):
        hp.set_hparam("momentum", 0.9)
    with pytest.raises(ValueError, match="momentum"):
        hp.parse("momentum=0.9")


def test_same_name_twice_in_one_parse_is_multiple_assignments():
    hp = HParams(lr=0.1)
    with pytest.raises(ValueError, match="Multiple assignments") as info:
        hp.parse("lr=0.2,lr=0.3")
    assert "lr" in str(info.value)
    assert hp.lr == 0.1


def test_add_hparam_and_reserved_names():
    hp = HParams()
    hp.add_hparam("units", 3)
    assert hp.units == 3
    with pytest.raises(ValueError, match="units"):
        hp.add_hparam("units", 4)
    with pytest.raises(ValueError, match="parse"):
        hp.add_hparam("parse", 1)
    with pytest.raises(ValueError, match="empty"):
        hp.add_hparam("empty_list", [])


def test_json_round_trip():
    hp = HParams(lr=0.1, hidden=[3, 4], name="a")
    text = hp.to_json(sort_keys=True)
    other = HParams(lr=0.0, hidden=[1], name="b").parse_json(text)
    assert other.values() == hp.values()
    with pytest.raises(ValueError):
        HParams(lr=0.1).parse_json('{"lr": "fast"}')


def test_malformed_string():
    with pytest.raises(ValueError, match="Malformed"):
        HParams(lr=0.1).parse("lr")


def test_get_with_default():
    hp = HParams(lr=0.1)
    assert hp.get("lr") == 0.1
    assert hp.get("missing", 5) == 5
    with pytest.raises(ValueError):
        hp.get("lr", "text")


def test_from_text_infers_types():
    hp = HParams.from_text("a=1,b=0.5,c=[2,3],d=true,e=adam")
    assert hp.values() == {"a": 1, "b": 0.5, "c": [2, 3], "d": True, "e": "adam"}
    hp = HParams.from_text('{"train_steps": 20, "hidden": [8]}')
    assert hp.train_steps == 20 and hp.hidden == [8]
    with pytest.raises(ValueError, match="Multiple assignments"):
        HParams.from_text("a=1,a=2")
    with pytest.raises(ValueError, match="Malformed"):
        HParams.from_text("a=[1,2")


def test_parse_values_ignore_unknown():
    from kubelearn.hparams import parse_values

    assert parse_values("a=1,b=2.5,c=x", {"a": int}, ignore_unknown=True) == {"a": 1}
    with pytest.raises(ValueError, match="Unknown hyperparameter type for b"):
        parse_values("a=1,b=2.5", {"a": int})


def test_list_assigned_to_a_list_index():
    from kubelearn.hparams import parse_values

    with pytest.raises(ValueError, match=r"^Assignment of a list to a list index\.$"):
        parse_values("arr[1]=[1,2,3]", {"arr": int})
    with pytest.raises(ValueError, match=r"^Assignment of a list to a list index\.$"):
        HParams(arr=[1, 2, 3]).parse("arr[1]=[4,5]")


def test_str_is_read_back_by_parse():
    source = HParams(a=1, b=[2.0, 3.0], c="relu6", d=True, e=["x", "y"])
    target = HParams(a=4, b=[5.0, 6.0], c="relu10", d=False, e=["z"])
    target.parse(str(source))
    assert target.values() == source.values()
    assert str(HParams(a=1, b=[2.0, 3.0])) == "a=1,b=[2.0, 3.0]"


def test_the_models_reserved_names_are_hparams_own_attributes():
    from kubelearn_spec.schema import RESERVED_HPARAM_NAMES

    own = {name for name in dir(HParams) if not name.startswith("_")}
    assert set(RESERVED_HPARAM_NAMES) == own
    for name in own:
        with pytest.raises(ValueError, match="reserved"):
            HParams(**{name: 1})


def test_a_name_the_model_takes_is_a_name_hparams_takes_and_writes():
    from hypothesis import given
    from hypothesis import strategies as st

    from kubelearn_spec.schema import HPARAM_NAME, hparam_name_problem

    @given(st.from_regex(HPARAM_NAME, fullmatch=True) | st.text(max_size=8))
    def check(name: str) -> None:
        if hparam_name_problem(name) is not None:
            return
        hp = HParams(**{name: 1})
        assert getattr(hp, name) == 1
        assert hp.parse(f"{name}=2").values() == {name: 2}
        assert HParams.from_text(str(hp)).values() == {name: 2}

    check()
