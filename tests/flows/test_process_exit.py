"""flows.process_exit: a finished console run leaves through its atexit handlers and then skips finalization; a run
that ends any other way is finalized as usual."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, ending: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    handler, finalized = tmp_path / "handler-ran", tmp_path / "finalized"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from flows import process_exit
        process_exit.skip_finalization()
        import atexit, logging
        atexit.register(lambda: open({str(handler)!r}, "w").write("ran"))
        logging.basicConfig(stream=sys.stderr)

        import os
        fd = os.open({str(finalized)!r}, os.O_WRONLY | os.O_CREAT)

        class Finalized:
            def __del__(self, write=os.write, fd=fd):  # bound now: module globals may be gone at finalization
                write(fd, b"finalized")

        kept = Finalized()
        sys.stdout.write("a line without its newline")  # buffered: must still come out
        logging.getLogger("run").warning("logged at the end")
        {ending}
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    return done, handler, finalized


def test_a_finished_run_exits_with_its_status_after_its_handlers_without_finalizing(tmp_path: Path) -> None:
    done, handler, finalized = _run(tmp_path, "process_exit.exit(3)")
    assert done.returncode == 3
    assert done.stdout == "a line without its newline" and "logged at the end" in done.stderr
    assert handler.read_text() == "ran"  # every atexit handler ran (Prefect's and logging's flush there)
    assert finalized.read_text() == ""  # then out, without tearing the interpreter down


@pytest.mark.parametrize("ending, status", [("raise SystemExit(4)", 4), ("raise RuntimeError('boom')", 1)])
def test_a_run_ended_any_other_way_is_finalized_as_usual(tmp_path: Path, ending: str, status: int) -> None:
    done, handler, finalized = _run(tmp_path, ending)
    assert done.returncode == status
    assert done.stdout == "a line without its newline"
    assert handler.read_text() == "ran" and finalized.read_text() == "finalized"
