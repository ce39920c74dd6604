import subprocess
import sys

import pytest

from conftest import make_dataset
from emodetect import __version__
from emodetect.cli import main


def run_cli(*args, env_cache=None):
    return subprocess.run([sys.executable, "-m", "emodetect", *map(str, args)], capture_output=True, text=True)


def test_version_and_help(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "ingest" in capsys.readouterr().out


def test_ingest_prints_a_split_table(tmp_path, tiny_zip, capsys):
    assert main(["ingest", str(tiny_zip[0]), "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "ingested" in out and "train" in out and "skipped 2 unreadable images" in out
    assert main(["ingest", str(tiny_zip[0]), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "loaded from cache" in capsys.readouterr().out


def test_audit_writes_report(tmp_path, tiny_zip, capsys):
    assert main(["audit", str(tiny_zip[0]), "--out", str(tmp_path / "a"), "--cache-dir", str(tmp_path / "c")]) == 0
    assert (tmp_path / "a" / "audit.md").exists()
    assert "warning: file format shortcut" in capsys.readouterr().out


@pytest.mark.parametrize("problem", ["missing", "unknown_class", "bad_csv", "empty"])
def test_bad_input_is_one_line_and_nonzero_exit(tmp_path, problem):
    extra = ["--label-source", "csv"] if problem == "bad_csv" else []  # a bad CSV only stops CSV labels
    data = tmp_path / "d"
    if problem == "unknown_class":
        make_dataset(data, n_per_class=1, classes=("anger", "grumpy"), with_csv=False)
    elif problem == "bad_csv":
        make_dataset(data, n_per_class=1)
        (data / "labels.csv").write_text("nothing,useful\n1,2\n")
    elif problem == "empty":
        data.mkdir()
    result = run_cli("ingest", data, "--cache-dir", tmp_path / "c", *extra)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emodetect: error:"), result.stderr
    assert "Traceback" not in result.stderr
