"""The quality page's seed and target tables are what megaraptr.bench.seeds prints from the
runs.json committed beside them: every figure of them traces to a raw record, none is typed in."""
from __future__ import annotations

import json

import pytest
from support import ROOT

from megaraptr.bench.seeds import seed_table, target_table

PAGE = ROOT / "docs" / "quality" / "README.md"
# (runs.json of each seed, the reference method): each table the page shows
TABLES = [
    (("ideas-h5-seed1234", "ideas-h5-seed2"), "full"),
    (("bert-h5-seed1234", "bert-h5-seed2"), "full"),
    (("bert-h5-seed1234", "bert-h5-seed2"), "stacking"),
    (("gpt-h20-seed1234", "gpt-h20-seed2"), "full"),
    (("bert-h20-seed1234", "bert-h20-seed2"), "full"),
]


def _sweep(name: str) -> dict:
    with open(PAGE.parent / f"{name}-runs.json") as f:
        return json.load(f)


@pytest.mark.parametrize("names,ref", TABLES, ids=[f"{'+'.join(n)}-vs-{r}" for n, r in TABLES])
def test_the_pages_seed_table_is_the_committed_runs(names, ref):
    page = PAGE.read_text()
    lines = seed_table([_sweep(n) for n in names], ref, ["1234", "2"])
    missing = [line for line in lines if line and line not in page]
    assert not missing, f"docs/quality/README.md lacks, from {names} vs {ref}: {missing[:2]}"


SETTINGS = [("GPT, 5", "ideas-h5"), ("GPT, 20", "gpt-h20"), ("BERT, 5", "bert-h5"),
            ("BERT, 20", "bert-h20")]


@pytest.mark.parametrize("method", ["raptr", "raptr-fixed-half"])
def test_the_pages_target_table_is_the_committed_runs(method):
    settings = [(name, [_sweep(f"{stem}-seed1234"), _sweep(f"{stem}-seed2")])
                for name, stem in SETTINGS]
    lines = target_table(settings, method, {"full": 0.01, "stacking": 0.0})
    missing = [line for line in lines if line not in PAGE.read_text()]
    assert not missing, f"docs/quality/README.md lacks {method}'s target rows: {missing[:2]}"


def test_every_committed_sweep_has_its_report_and_plot():
    page = PAGE.read_text()
    for runs in PAGE.parent.glob("*-runs.json"):
        stem = runs.name[:-len("-runs.json")]
        assert (PAGE.parent / f"{stem}-report.md").exists(), stem
        assert list(PAGE.parent.glob(f"{stem}-quality_h*.png")), stem
        assert stem in page, f"{stem} is committed but the page never names it"
