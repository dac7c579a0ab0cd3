"""URLs' user-info never reaches what the CLI prints."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from kubelearn.redact import RedactingStream, redact


def test_user_info_is_removed_from_every_url():
    assert redact("s3://KEY:SECRET@bucket/x and gs://u@b/p") == "s3://bucket/x and gs://b/p"
    assert redact("at s3://bucket/path@version: fine") == "at s3://bucket/path@version: fine"
    assert redact("mail me: a@b.c") == "mail me: a@b.c"


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
                                      blacklist_characters="/@'\"<>\x85"), min_size=1),
       st.text())
def test_no_secret_survives(secret, rest):
    out = redact(f"s3://key:{secret}@bucket/{rest}")
    assert out.startswith("s3://bucket/")


def test_the_stream_writes_redacted_text():
    sink = io.StringIO()
    stream = RedactingStream(sink)
    assert stream.write("s3://k:s@b/p\n") == len("s3://k:s@b/p\n")
    assert sink.getvalue() == "s3://b/p\n"
