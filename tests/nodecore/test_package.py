import subprocess
import sys

import nodecore


def test_importing_nodecore_leaves_prefect_and_pyplot_out():
    code = "import sys, nodecore; print(sorted(m for m in ('prefect', 'matplotlib.pyplot') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_is_exported_and_documented():
    for name in nodecore.__all__:
        obj = getattr(nodecore, name)
        if callable(obj) and not name.isupper():
            assert obj.__doc__, f"nodecore.{name} has no docstring"
