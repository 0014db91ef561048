"""Safety: no spec path, job name, table name or date writes (or reads) outside where it should;
no pickle is ever loaded; files are created with the process umask, never world-writable.

The output root is `[output] path`: relative paths start at the project folder and may not climb
out of it ('..' is refused in every path key), an absolute path is the operator's choice of root.
Whatever the root, a run writes only inside <root>/<job>/ (plus its log file in [log] dir): the
job name is letters, digits, '_' and '-', table names are fixed, the date is parsed as a date."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recall.store.reader import read_table
from tests.support.failures import assert_refused, record
from tests.support.files import assert_consistent, out_dir
from tests.support.project import DATE, write_spec

RECALL = Path(__file__).resolve().parent.parent / "recall"


def project(tmp_path: Path, small_log: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(small_log, root / "data" / "log")
    write_spec(root)
    return root


def tree(top: Path) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*")}


@pytest.mark.parametrize("key,value", [
    ("output.path", "../outside"),
    ("output.path", "data/recall/../../../outside"),
    ("log.dir", "../logs-outside"),
    ("input.path", "../../etc"),
    ("filter.blocklist_path", "data/../../secret.txt"),
])
def test_dotdot_in_any_spec_path_is_refused(key, value, tmp_path, small_log, cli):
    root = project(tmp_path, small_log)
    before = tree(tmp_path)
    res = cli(root, "run", "small", "--date", DATE, "--set", f'{key}="{value}"')
    record(f"safety: {key} = {value!r}", res)
    section, name = key.split(".")
    assert_refused(res, 2, f"[{section}] {name}", "may not contain '..'")
    assert tree(tmp_path) == before, "something was written"


def test_dotdot_in_the_spec_file_is_refused(tmp_path, small_log, cli):
    root = project(tmp_path, small_log)
    spec = root / "jobs" / "small.toml"
    spec.write_text(spec.read_text().replace("[output]\n", '[output]\npath = "../../escaped"\n', 1))
    before = tree(tmp_path)
    res = cli(root, "run", "small", "--date", DATE)
    record("safety: [output] path = '../../escaped' in the spec file", res)
    assert_refused(res, 2, "[output] path", "'../../escaped' may not contain '..'", "small.toml")
    assert tree(tmp_path) == before


def test_a_spec_file_whose_name_is_not_a_job_name_is_refused(tmp_path, small_log, cli):
    root = project(tmp_path, small_log)
    shutil.copy(root / "jobs" / "small.toml", root / "jobs" / "x;touch pwned.toml")
    res = cli(root, "run", "jobs/x;touch pwned.toml", "--date", DATE)
    record("safety: spec file named 'x;touch pwned.toml'", res)
    assert_refused(res, 2, "[job] name", "x;touch pwned")
    assert not (root / "data" / "recall").exists() and not (root / "pwned").exists()


def test_an_absolute_output_path_is_the_root_and_nothing_is_written_elsewhere(tmp_path, small_log, cli):
    root = project(tmp_path, small_log)
    elsewhere = tmp_path / "srv" / "recall"
    before = tree(tmp_path)
    res = cli(root, "run", "small", "--date", DATE, "--set", f'output.path="{elsewhere}"')
    record("safety: absolute output.path", res)
    assert res.returncode == 0, res.stderr
    assert_consistent(elsewhere / "small")
    new = tree(tmp_path) - before
    outside = sorted(p for p in new if p not in ("srv", "srv/recall")
                     and not p.startswith(("srv/recall/small", "project/logs")))
    assert outside == [], outside
    assert not (root / "data" / "recall").exists()


@pytest.mark.parametrize("kwargs,error", [
    ({"job": "../small", "table": "u2i"}, "bad job name"),
    ({"job": "/etc", "table": "u2i"}, "bad job name"),
    ({"job": "small", "table": "../_manifest"}, "unknown table"),
    ({"job": "small", "table": "u2i", "date": "../../../etc"}, "Invalid isoformat"),
])
def test_the_reader_refuses_names_that_are_paths(kwargs, error, tmp_path):
    with pytest.raises(ValueError, match=re.escape(error)):
        read_table(output=tmp_path, **kwargs)


# --- no pickle --------------------------------------------------------------------------------

UNPICKLING = re.compile(r"\bpickle\b|read_pickle|joblib|cloudpickle|\bdill\b|shelve|marshal\.load|torch\.load")


def test_no_module_loads_pickles():
    """Nothing in the package unpickles; any np.load says allow_pickle=False."""
    for path in sorted(RECALL.rglob("*.py")):
        text = path.read_text()
        assert not UNPICKLING.search(text), f"{path.name}: {UNPICKLING.search(text).group(0)}"
        for call in re.findall(r"np\.load\([^)]*\)|numpy\.load\([^)]*\)", text):
            assert "allow_pickle=False" in call, f"{path.name}: {call}"


GUARD = """
import sys, pickle, _pickle, numpy
real = {m: (m.load, m.loads, m.Unpickler) for m in (pickle, _pickle)}
def numba_cache():
    # numba's cache of the compiled kernels (its own files, written by it next to recall/kernel)
    # is pickled; it is code the package compiled, never data a run reads
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.endswith(("numba/core/caching.py", "numba/core/serialize.py")):
            return True
        frame = frame.f_back
    return False
def refuse(*args, **kwargs):
    raise RuntimeError("a pickle load was attempted")
def guarded(module, index):
    def call(*args, **kwargs):
        if numba_cache():
            return real[module][index](*args, **kwargs)
        refuse()
    return call
for module in (pickle, _pickle):
    module.load, module.loads, module.Unpickler = (guarded(module, i) for i in range(3))
sys.addaudithook(lambda event, args: refuse() if event == "pickle.find_class" and not numba_cache() else None)
numpy_load = numpy.load
def load(*args, allow_pickle=False, **kwargs):
    if allow_pickle:
        refuse()
    return numpy_load(*args, allow_pickle=False, **kwargs)
numpy.load = load
from recall.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_whole_run_loads_no_pickle(tmp_path, small_log):
    """The CLI with every unpickling entry point made to fail (but for numba loading the kernels it
    compiled from its own cache): a run and a forced rerun succeed."""
    root = project(tmp_path, small_log)
    for extra in ([], ["--force"]):
        res = subprocess.run([sys.executable, "-c", GUARD, "--root", str(root), "run", "small", "--date", DATE,
                              *extra], capture_output=True, text=True, cwd=root, timeout=300)
        assert res.returncode == 0, res.stderr
        assert "pickle" not in res.stderr
    assert "a pickle load was attempted" not in (root / "logs" / "small.log").read_text()
    assert_consistent(out_dir(root))


# --- umask -------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_files_follow_the_umask_and_are_never_world_writable(umask, tmp_path, small_log):
    """A run masks out the world-write bit whatever the umask (umask 000: files 664, folders 775);
    a stricter umask is kept."""
    root = project(tmp_path, small_log)
    for extra in ([], ["--force"]):  # a first publish, then a swap of the partitions
        res = subprocess.run([sys.executable, "-m", "recall", "--root", str(root), "run", "small", "--date", DATE,
                              *extra], capture_output=True, text=True, cwd=root, timeout=300,
                             preexec_fn=lambda: os.umask(umask))
        record(f"safety: run under umask {umask:03o}{' (forced rerun)' if extra else ''}", res)
        assert res.returncode == 0, res.stderr
    created = [p for top in (root / "data" / "recall", root / "logs") for p in [top, *top.rglob("*")]]
    assert any(p.name == "_SUCCESS" for p in created) and any(p.suffix == ".log" for p in created)
    for path in created:
        mode = path.stat().st_mode & 0o777
        assert not mode & 0o002, f"{path} is world-writable ({mode:o})"
        assert not mode & umask, f"{path} has mode {mode:o} despite umask {umask:03o}"
        if umask == 0o000 and path.suffix != ".log":  # loguru opens its files itself
            assert mode == (0o775 if path.is_dir() else 0o664), f"{path} has mode {mode:o} under umask 000"
