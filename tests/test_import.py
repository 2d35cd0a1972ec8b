import subprocess
import sys


def test_runtime_import_is_torch_free():
    code = (
        "import sys, clips4rt, clips4rt.cli, kernels;"
        "clips4rt.tokenize(['a cat']);"
        "print(sorted(m for m in ('torch', 'triton', 'open_clip', 'train') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
