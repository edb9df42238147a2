"""A missing optional dependency fails the tests that need it, with the install hint, instead of skipping them."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import INSTALL_HINT, require

ROOT = Path(__file__).parent.parent


def test_require_names_the_missing_package_and_the_install_hint(monkeypatch):
    require("json", "math")  # present: nothing happens
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when it is absent
    hint = re.escape(INSTALL_HINT)
    with pytest.raises(ImportError, match=rf"onnxruntime not installed: .* Install them with {hint}"):
        require("json", "onnxruntime")


def test_collection_fails_loudly_without_the_test_extras():
    """Collected in a process where PEFT and rouge-score cannot be imported: both files that need them fail to
    collect (exit code 2, one error each) and the output says how to install what is missing."""
    blocked = ("import sys, pytest\n"
               "sys.modules.update(peft=None, rouge_score=None)\n"
               "sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', 'tests/test_sharing.py', "
               "'tests/test_seq2seq.py']))\n")
    result = subprocess.run([sys.executable, "-c", blocked], cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "2 errors" in output, output
    assert f"peft not installed: these tests need manyheads' test extras. Install them with {INSTALL_HINT}" in output
    assert f"rouge_score not installed: these tests need manyheads' test extras. Install them with {INSTALL_HINT}" \
        in output
