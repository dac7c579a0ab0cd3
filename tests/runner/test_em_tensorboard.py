"""EventWriter in a process of its own: without tensorboardX, and at an exit without close."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.support import run_python, scalars


def test_without_tensorboardx_it_is_a_noop_with_one_warning(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import logging, sys
        sys.modules["tensorboardX"] = None  # makes the import fail
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        from kubelearn.em.tensorboard import EventWriter
        for _ in range(3):
            w = EventWriter({str(tmp_path)!r})
            w.scalar("loss", 1.0, 1); w.scalars("eval", {{"loss": 1.0}}, 1)
            w.flush(); w.close()
        print(w.enabled)
    """)
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "tensorboardX is not installed" in warnings[0]
    assert list(tmp_path.iterdir()) == []


def test_em_imports_without_optional_packages() -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["tensorboardX"] = None
        sys.modules["matplotlib"] = None
        import kubelearn.em, kubelearn.em.cli, kubelearn.em.tensorboard
        print("ok")
    """)
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_events_survive_an_exit_without_close(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        from kubelearn.em.tensorboard import EventWriter
        w = EventWriter({str(tmp_path)!r}, flush_secs=3600)
        for step in range(100):
            w.scalar("loss", step / 100, step)
    """)
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert [s for _, s, _ in scalars(tmp_path)] == list(range(100))
