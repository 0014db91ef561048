"""Job spec loading: defaults, strictness, overrides."""
from __future__ import annotations

from pathlib import Path

import pytest

from recall.jobs import load_job as load_spec
from recall.spec import JobSpec, parse_override, resolve_job_path
from recall.errors import SpecError

REPO = Path(__file__).resolve().parent.parent


def spec_file(tmp_path: Path, text: str, name: str = "job") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_minimal_spec_gets_defaults_and_name_from_stem(tmp_path):
    spec = load_spec(spec_file(tmp_path, '[input]\npath = "x"\n', "nightly-recall_2"))
    assert spec.name == "nightly-recall_2"
    assert spec.job.lookback_days == 28 and spec.job.timezone == "UTC"
    assert spec.recall.u2i.k == 100 and spec.recall.u2i.sources == ["als", "item_based", "recent_popular"]
    assert spec.output.path == "data/recall" and spec.evaluate.holdout_days == 1


def test_example_job_is_valid():
    spec = load_spec(REPO / "jobs" / "example.toml")
    assert spec.name == "example" and spec.job.schedule
    assert spec.input.event_weights == {"view": 1.0, "click": 3.0, "purchase": 10.0}


@pytest.mark.parametrize("text, needle", [
    ('[input]\npath = "x"\n[model]\nfactor = 3\n', "unknown key 'factor' in [model] (did you mean factors?)"),
    ('[input]\npath = "x"\n[modle]\n', "unknown key 'modle' in the top level (did you mean model?)"),
    ('[input]\npath = "x"\n[recall.u2i]\nkk = 3\n', "unknown key 'kk' in [recall.u2i]"),
    ('[input]\npath = "x"\n[model]\nfactors = "64"\n', "[model] factors must be an integer, got str '64'"),
    ('[input]\npath = "x"\n[model]\nfactors = 1.5\n', "[model] factors must be an integer"),
    ('[input]\npath = "x"\n[model]\nweighting = "tfidf"\n', "[model] weighting must be one of 'none', 'log', 'bm25'"),
    ('[input]\npath = "x"\n[job]\nlookback_days = true\n', "[job] lookback_days must be an integer"),
    ('[input]\npath = "x"\n[job]\nname = "bad name;rm"\n', "[job] name 'bad name;rm' may hold only"),
    ('[input]\npath = "x"\n[job]\ntimezone = "Mars/Base"\n', "is not a known IANA time zone"),
    ('[input]\npath = "x"\n[job]\nschedule = "61 * * * *"\n', "bad cron expression '61 * * * *'"),
    ('[input]\npath = "x"\n[job]\nschedule = "0 2 * * * % x"\n', "bad cron expression"),
    ("[job]\nlookback_days = 3\n", "[input] path is required"),
    ('[input]\npath = "../outside"\n', "[input] path '../outside' may not contain '..'"),
    ('[input]\npath = "x"\n[output]\npath = "data/../../etc"\n', "[output] path"),
    ('[input]\npath = "x"\n[recall.u2i]\nsources = ["als", "magic"]\n', "'magic' is not one of"),
    ('[input]\npath = "x"\n[recall.u2i]\nk = 0\n', "[recall.u2i] k must be at least 1"),
    ('[input]\npath = "x"\n[evaluate]\nholdout_days = 30\n', "must be less than [job] lookback_days"),
    ('[input]\npath = "x"\n[input]\n', "not valid TOML"),
    ('[input]\npath = "x"\nevent_weights = { view = -1.0 }\n', "event_weights.view must be a positive number"),
])
def test_bad_specs_are_refused_naming_the_key(tmp_path, text, needle):
    with pytest.raises(SpecError) as err:
        load_spec(spec_file(tmp_path, text))
    assert needle in str(err.value)
    assert err.value.exit_code == 2
    assert "\n" not in err.value.line()


def test_overrides_are_toml_values_else_text(tmp_path):
    path = spec_file(tmp_path, '[input]\npath = "x"\n')
    spec = load_spec(path, ["model.factors=8", "recall.u2i.k=7", "input.path=/data/log",
                            'recall.u2i.sources=["als", "popular"]', "job.timezone=Europe/Paris"])
    assert spec.model.factors == 8 and spec.recall.u2i.k == 7
    assert spec.input.path == "/data/log" and spec.recall.u2i.sources == ["als", "popular"]
    assert spec.job.timezone == "Europe/Paris"
    with pytest.raises(SpecError, match="unknown key 'nope'"):
        load_spec(path, ["model.nope=1"])
    with pytest.raises(SpecError, match="expected section.key=value"):
        parse_override("model.factors")
    with pytest.raises(SpecError, match="must name a section and a key"):
        parse_override("factors=3")


def test_spec_hash_changes_with_content_only(tmp_path):
    a = load_spec(spec_file(tmp_path, '[input]\npath = "x"\n', "a"))
    b = load_spec(spec_file(tmp_path, '[input]\npath = "x"\n', "a"))
    c = load_spec(spec_file(tmp_path, '[input]\npath = "x"\n', "a"), ["model.factors=8"])
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()
    assert isinstance(JobSpec().spec_hash(), str)


def test_job_resolves_by_name_or_path(tmp_path):
    (tmp_path / "jobs").mkdir()
    spec_file(tmp_path / "jobs", '[input]\npath = "x"\n', "nightly")
    assert resolve_job_path("nightly", tmp_path) == tmp_path / "jobs" / "nightly.toml"
    assert resolve_job_path(str(tmp_path / "jobs" / "nightly.toml"), tmp_path).name == "nightly.toml"
    with pytest.raises(SpecError, match="job spec not found.*jobs in .*: nightly"):
        resolve_job_path("nightlyy", tmp_path)
