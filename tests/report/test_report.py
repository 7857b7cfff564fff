"""The HTML report: its numbers against the result tables and the reference libraries, and a real browser.

Small synthetic result trees are built in tmp_path (no demo run needed). The browser test needs
Debian's chromium at /usr/bin/chromium and is skipped without it.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.browser_check import CHROMIUM, check_in_browser

from wsikt.formats.stats_tables import read_stats_table, write_stats_table
from wsikt.report.build import ReportInputs, ReportOutputs, ReportSettings, build_report
from wsikt.report.data import positive_transfer
from wsikt.report.facts import runtime_per_stage
from wsikt.report.metrics import (
    FoldPredictions,
    bootstrap_c_index,
    fold_time_metrics,
    harrell_c_batch,
    load_fold_predictions,
    risk_groups,
)
from wsikt.stats.settings import StatsSettings
from wsikt.stats.tables import chance_table, compare_table, matrix_cells, matrix_ci_table
from wsikt.survival.metrics import survival_at

ENC, MODEL, EP = "enc", "abmil", "OS"
N_BINS, WIDTH = 8, 365.0


def _predictions(rng, patients, fold_of, k, signal=1.0) -> pd.DataFrame:
    """All patients of a cancer as one fold's predictions: exponential survival driven by x."""
    n = len(patients)
    x = rng.normal(size=n)
    lam = np.exp(signal * x) / 1500.0
    t_event = rng.exponential(1 / lam)
    t_cens = rng.uniform(300, 4000, size=n)
    time = np.round(np.minimum(t_event, t_cens))
    event = (t_event <= t_cens).astype(int)
    ends = (np.arange(N_BINS) + 1) * WIDTH
    noisy = lam * np.exp(rng.normal(scale=0.5, size=n))
    surv = np.exp(-noisy[:, None] * ends[None, :])
    df = pd.DataFrame({"patient_id": patients, "fold": k, "split": np.where(fold_of == k, "test", "train"),
                       "time": time, "event": event, "risk": -surv.sum(axis=1)})
    return pd.concat([df, pd.DataFrame(surv, columns=[f"S_{j}" for j in range(N_BINS)])], axis=1)


def make_tree(root: Path, cancers=(("AAA", 40), ("BBB", 30), ("CCC", 12)), folds=3, seed=0) -> dict:
    """A results/ tree shaped like the workflow's: build_report's inputs and settings."""
    rng = np.random.default_rng(seed)
    r = root / "results"
    samples, splits, excl, preds, qc, summary = [], [], [], [], [], []
    for cancer, n in cancers:
        patients = [f"{cancer}-{i:03d}" for i in range(n)]
        fold_of = np.arange(n) % folds
        rows = []
        base = _predictions(rng, patients, fold_of, 0)  # labels shared by all folds
        for k in range(folds):
            d = r / f"experts/{ENC}/{MODEL}/{EP}/{cancer}/fold{k}"
            d.mkdir(parents=True)
            p = _predictions(rng, patients, fold_of, k)
            p[["time", "event"]] = base[["time", "event"]]
            p["split"] = np.where(fold_of == k, "test", "train")
            p.to_csv(d / "predictions.tsv", sep="\t", index=False)
            preds.append(d / "predictions.tsv")
            (d / "metrics.json").write_text(json.dumps({"cancer": cancer, "inner_edges": ((np.arange(1, N_BINS)) * WIDTH).tolist()}))
            test = p[p["split"] == "test"]
            rows.append(harrell_c_batch(test["time"].to_numpy(), test["event"].to_numpy(), test["risk"].to_numpy())[0])
        c = np.array(rows)
        summary.append({"cancer": cancer, "model": MODEL, "n_patients": n, "n_events": int(base["event"].sum()),
                        "folds": folds, "c_index_mean": float(np.nanmean(c)), "c_index_sd": float(np.nanstd(c, ddof=1)),
                        "c_index_folds": ",".join(f"{v:.4f}" for v in c), "null_folds": int(cancer == "CCC")})
        sp = base[["patient_id", "time", "event"]].assign(cancer=cancer, fold=fold_of)
        (r / f"splits/{EP}").mkdir(parents=True, exist_ok=True)
        (r / f"labels/{EP}").mkdir(parents=True, exist_ok=True)
        sp.to_csv(r / f"splits/{EP}/{cancer}.tsv", sep="\t", index=False)
        splits.append(r / f"splits/{EP}/{cancer}.tsv")
        for stage, reason in (("labels", "no OS time in the clinical table"), ("splits", "no usable slide")):
            e = r / f"{stage}/{EP}/{cancer}.excluded.tsv"
            pd.DataFrame({"patient_id": [f"{cancer}-X{stage[0]}"], "cancer": [cancer], "reason": [reason]}).to_csv(e, sep="\t", index=False)
            excl.append(e)
        (r / "qc").mkdir(exist_ok=True)
        for i, pid in enumerate(patients):
            slide = f"{pid}-01Z-00-DX1"
            samples.append({"slide_id": slide, "patient_id": pid, "cancer": cancer, "path": f"x/{slide}.tiff"})
            img = np.full((48, 64, 3), 235, np.uint8)
            img[10:38, 12 + i % 20:40 + i % 20] = (180, 90, 200)
            import cv2

            cv2.imwrite(str(r / f"qc/{slide}.png"), img)
            qc.append(r / f"qc/{slide}.png")
    (r / f"experts/{ENC}/{MODEL}/{EP}").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(summary).to_csv(r / f"experts/{ENC}/{MODEL}/{EP}/summary.tsv", sep="\t", index=False)
    names = [c for c, _ in cancers]
    # zero-shot risks of every (source, fold) expert on every target: own expert and the others rank by
    # −log time, except AAA's experts, which rank BBB backwards (below chance)
    stats_dir = r / f"stats/{ENC}/{MODEL}/{EP}"
    stats_dir.mkdir(parents=True)
    cells = {}
    for t, split in zip(names, splits):
        sp = pd.read_csv(split, sep="\t")
        sign = {s: -1.0 if (s, t) == ("AAA", "BBB") else 1.0 for s in names}
        risks = {(s, k): -sign[s] * np.log(sp["time"].to_numpy()) + rng.normal(scale=1.5, size=len(sp))
                 for s in names for k in range(folds)}
        cells[t] = matrix_cells(sp, risks)
    stats_settings = StatsSettings(chance_permutations=300, n_boot=200)
    matrix_ci = matrix_ci_table(cells, stats_settings)
    write_stats_table(matrix_ci, "matrix_ci", stats_dir / "matrix_ci.tsv")
    matrix = matrix_ci[["source", "target", "c_index_mean"]].assign(c_index_sd=rng.uniform(0.01, 0.1, len(matrix_ci)),
                                                                    n=folds * folds)
    chance = chance_table({"expert": preds}, stats_settings)
    write_stats_table(chance, "chance", stats_dir / "chance.tsv")
    write_stats_table(compare_table({"expert": preds}, stats_settings, chance), "compare", stats_dir / "compare.tsv")
    (r / f"transfer/{ENC}/{MODEL}/{EP}").mkdir(parents=True)
    matrix.to_csv(r / f"transfer/{ENC}/{MODEL}/{EP}/matrix.tsv", sep="\t", index=False)
    pd.DataFrame(samples).to_csv(root / "samples.tsv", sep="\t", index=False)
    for stage, n_jobs, s in (("preprocess", 3, 2.0), ("experts", 4, 5.5), ("report", 1, 99.0)):
        for j in range(n_jobs):
            b = r / f"benchmarks/{stage}/sub/{j}.tsv"
            b.parent.mkdir(parents=True, exist_ok=True)
            b.write_text(f"s\th:m:s\tmax_rss\n{s + j}\t0:00:01\t10\n")
    inputs = ReportInputs(
        summary=r / f"experts/{ENC}/{MODEL}/{EP}/summary.tsv", matrix=r / f"transfer/{ENC}/{MODEL}/{EP}/matrix.tsv",
        splits=splits, samples=root / "samples.tsv", excluded=excl, qc=qc, predictions=preds, benchmarks=r / "benchmarks",
        chance=stats_dir / "chance.tsv", compare=stats_dir / "compare.tsv", matrix_ci=stats_dir / "matrix_ci.tsv",
    )
    settings = ReportSettings(config={"endpoint": EP, "demo": {"enabled": True, "seed": 7}, "report": {"max_qc_images": 5}},
                              endpoint=EP, encoder=ENC, model=MODEL, max_qc=5)
    return {"inputs": inputs, "settings": settings}


HEAT_SLIDES = 14  # slides with attention layers (≥ 12 heatmaps are drawn)
GRID, PATCH = 4, 256  # each slide: a 4 × 4 grid of 256-px patches (1024 px at 0.5 µm/px)


def make_attention(root: Path) -> tuple[Path, Path]:
    """Real pyramidal TIFFs whose nuclear density rises left to right, attention layers that follow it
    (AAA) or run against it (BBB), and the heatmaps rule's outputs built from them."""
    import cv2

    from wsikt.acquire.demo_render import write_pyramid_tiff
    from wsikt.formats.attention import PatchAttention, SlideAttention, write_attention_h5
    from wsikt.report.heatmaps import HeatmapSettings, build_heatmaps

    rng = np.random.default_rng(3)
    cells = np.array([(x, y) for y in range(GRID) for x in range(GRID)]) * PATCH
    slides, layers = {}, {"AAA": [], "BBB": []}
    for i in range(HEAT_SLIDES):
        cancer = "AAA" if i % 2 == 0 else "BBB"
        img = np.empty((GRID * PATCH, GRID * PATCH, 3), np.uint8)
        img[:] = (228, 150, 200)
        for x0, y0 in cells:
            for _ in range(8 * (x0 // PATCH + 1)):  # 8, 16, 24, 32 nuclei per patch, column by column
                cx, cy = x0 + rng.integers(6, PATCH - 6), y0 + rng.integers(6, PATCH - 6)
                cv2.circle(img, (int(cx), int(cy)), 3, (72, 40, 120), -1)
        sid = f"{cancer}-H{i:02d}-01Z-00-DX1"
        path = root / f"slides/{sid}.tiff"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_pyramid_tiff(path, img, 0.5, aperio=True)
        slides[sid] = path
        density = cells[:, 0] // PATCH + 1 + rng.uniform(0, 0.5, len(cells))  # ties broken at random
        a = density if cancer == "AAA" else density.max() + 1 - density
        layers[cancer].append(SlideAttention(sid, sid[:8], i % 3, float(rng.normal()), {"20x": PatchAttention(cells, a / a.sum(), PATCH)}))
    h5 = []
    for cancer, ls in layers.items():
        h5.append(root / f"results/attention/{cancer}/attention.h5")
        write_attention_h5(h5[-1], ls, "expert", MODEL, cancer)
    index, density = root / "results/report/heatmaps.tsv", root / "results/report/attention_density.tsv"
    build_heatmaps(h5, [], slides, HeatmapSettings(slides=12, top_patches=3), root / "results/report/heatmaps", index, density,
                   mechanisms={"AAA": "shared", "BBB": "reversed"}, model=MODEL)
    return index, density


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    args = make_tree(root)
    index, density = make_attention(root)
    args["inputs"] = replace(args["inputs"], heatmaps=index, density=density)
    out = root / "results/report/index.html"
    numbers = build_report(args["inputs"], ReportOutputs(out, km=root / "km.png", heatmap=root / "hm.png",
                                                         metrics=root / "metrics.tsv"), args["settings"])
    return root, args, out, out.read_text(), numbers


def _table(html: str, table_id: str) -> str:
    return html.split(f'id="{table_id}"')[1].split("</table>")[0]


def test_expert_table_equals_summary_and_ci_contains_mean(built):
    _, args, _, html, _ = built
    summary = pd.read_csv(args["inputs"].summary, sep="\t").set_index("cancer")
    rows = re.findall(r'<tr><td>(\w+)</td><td>(\d+)</td><td data-c="([0-9.]+)">.*?data-lo="([0-9.]+)" data-hi="([0-9.]+)"',
                      _table(html, "expert-table"))
    assert [r[0] for r in rows] == list(summary.index)
    for cancer, n, c, lo, hi in rows:
        assert int(n) == summary.at[cancer, "n_patients"]
        assert float(c) == pytest.approx(summary.at[cancer, "c_index_mean"], abs=5e-5)
        assert float(lo) <= float(c) <= float(hi)


def test_null_experts_are_named_under_the_expert_table(built):
    _, args, _, html, _ = built
    summary = pd.read_csv(args["inputs"].summary, sep="\t").set_index("cancer")
    note = html.split('id="null-experts">')[1].split("</p>")[0]
    named = re.findall(r"(\w+) (\d+) of (\d+) folds", note)
    assert named and named == [(c, str(r.null_folds), str(r.folds)) for c, r in summary.iterrows() if r.null_folds]


def test_transfer_table_and_positive_counts_equal_matrix(built):
    _, args, _, html, _ = built
    matrix = pd.read_csv(args["inputs"].matrix, sep="\t")
    cells = [float(v) for v in re.findall(r'data-c="([0-9.]+)"', _table(html, "transfer-table"))]
    pivot = matrix.pivot(index="source", columns="target", values="c_index_mean")
    assert cells == pytest.approx(pivot.to_numpy().ravel().round(4).tolist(), abs=5e-5)
    counts = re.findall(r'<tr><td>(\w+)</td><td>\d+</td><td data-n05="(\d+)">\d+</td><td data-n06="(\d+)">', _table(html, "positive-table"))
    for target, n05, n06 in counts:
        off = matrix[(matrix["target"] == target) & (matrix["source"] != target)]["c_index_mean"]
        assert (int(n05), int(n06)) == ((off > 0.5).sum(), (off > 0.6).sum())
    assert len(counts) == matrix["target"].nunique()
    assert positive_transfer(matrix)["n_sources"].eq(matrix["source"].nunique() - 1).all()


def test_page_is_self_contained_and_labelled(built):
    _, _, _, html, _ = built
    assert not re.search(r'(src|href)="(?!data:|#)', html), "only inline data: images and in-page links"
    assert "<script" not in html and "@import" not in html and "url(" not in html
    assert html.count("data:image/png;base64,") == 2 + 5 + 12 + 4 * 3  # KM, transfer heatmap, 5 QC, 12 attention heatmaps, 4 × 3 top patches
    assert "ROUPKT was not run" in html and "synthetic demo cohort" in html
    for reason in ("no OS time in the clinical table", "no usable slide"):
        assert reason in html
    assert re.search(r'data-s="(\d+\.\d+)"', _table(html, "runtime-table"))


def test_attention_heatmaps_gallery_and_density_are_in_the_page(built):
    root, args, _, html, numbers = built
    index = pd.read_csv(args["inputs"].heatmaps, sep="\t")
    drawn = re.findall(r'<figure class="heatmap" data-slide="([^"]+)">', html)
    assert len(drawn) == 12 == (index["kind"] == "heatmap").sum() and len(set(drawn)) == 12
    assert sorted(set(s[:3] for s in drawn)) == ["AAA", "BBB"]  # spread over cancers
    rows = re.findall(r'<tr data-kind="(highest risk|lowest risk)"><td>(\w+)</td>', _table(html, "gallery-table"))
    assert sorted(rows) == [("highest risk", "AAA"), ("highest risk", "BBB"), ("lowest risk", "AAA"), ("lowest risk", "BBB")]
    crops = index[index["kind"] != "heatmap"]
    for (_, slide), g in crops.groupby(["cancer", "slide_id"]):  # the gallery's patches are the slide's most attended
        assert list(g["rank"]) == [1, 2, 3] and g["attention"].is_monotonic_decreasing
    # the density measured from the pixels ranks the patches as the planted nuclei do: ρ ≈ +1 (AAA), −1 (BBB)
    rho = dict(re.findall(r'<tr><td>(\w+)</td><td class="t">\w+</td><td class="t">\w+</td><td>\d+</td><td data-rho="(-?[0-9.]+)"',
                          _table(html, "density-table")))
    assert float(rho["AAA"]) > 0.8 and float(rho["BBB"]) < -0.8
    table = pd.read_csv(args["inputs"].density, sep="\t").set_index("cancer")
    assert float(rho["AAA"]) == pytest.approx(table.at["AAA", "rho_mean"], abs=5e-5) and table.at["AAA", "slides"] == 7


def test_heatmap_sample_is_chosen_by_config_and_named_slides_must_exist(built, tmp_path):
    from wsikt.report.heatmaps import HeatmapSettings, choose_slides, read_layers

    root = built[0]
    layers = read_layers(sorted((root / "results/attention").glob("*/attention.h5")))
    assert HeatmapSettings.from_config({"heatmaps": ["x"]}).slides == ("x",) and not HeatmapSettings(slides=0).enabled
    picked = choose_slides(layers, 3)
    aaa = sorted((s for c, s in layers if c == "AAA"), key=lambda s: -s.risk)
    assert [c for c, _ in picked] == ["AAA", "BBB", "AAA"] and picked[0][1] is aaa[0] and picked[2][1] is aaa[-1]
    assert [s.slide_id for _, s in choose_slides(layers, [aaa[1].slide_id])] == [aaa[1].slide_id]
    with pytest.raises(ValueError, match="report.heatmaps"):
        choose_slides(layers, ["NOPE"])


def test_report_says_when_heatmaps_are_off(built, tmp_path):
    _, args, _, _, _ = built
    out = tmp_path / "index.html"
    build_report(replace(args["inputs"], heatmaps=None, density=None), ReportOutputs(out), args["settings"])
    assert 'id="attention-off"' in out.read_text()


def test_roupkt_table_compares_with_the_own_expert(built, tmp_path):
    root, args, _, _, _ = built
    summary = pd.read_csv(args["inputs"].summary, sep="\t")
    roupkt = summary.assign(c_index_mean=summary["c_index_mean"] + 0.01 * np.arange(len(summary)), model="roupkt",
                            null_folds=[0, 2, 0])
    roupkt.to_csv(tmp_path / "roupkt.tsv", sep="\t", index=False)
    head = summary.assign(c_index_mean=0.42, model="baseline_head")
    head.to_csv(tmp_path / "head.tsv", sep="\t", index=False)
    out = tmp_path / "index.html"
    inputs = replace(args["inputs"], roupkt=tmp_path / "roupkt.tsv", baselines={"head": tmp_path / "head.tsv"})
    numbers = build_report(inputs, ReportOutputs(out), replace(args["settings"], roupkt_topk=3))
    table = numbers["roupkt"].set_index("cancer")
    for i, row in summary.reset_index(drop=True).iterrows():
        assert table.at[row["cancer"], "expert"] == row["c_index_mean"]
        assert table.at[row["cancer"], "delta"] == pytest.approx(0.01 * i)
        assert table.at[row["cancer"], "head"] == 0.42
    html = out.read_text()
    cells = re.findall(r'data-c="(\d\.\d+)"', _table(html, "roupkt-table"))
    assert [float(c) for c in cells] == pytest.approx(list(table["roupkt"]), abs=1e-4)
    assert "top-3" in html
    gated = html.split('id="null-roupkt"')[1].split("</p>")[0]  # ROUPKT's null-gated folds are named
    assert "BBB 2 of 3 folds" in gated and "AAA" not in gated


def test_a_mean_over_fewer_folds_says_how_many(built, tmp_path):
    """A fold without a comparable pair (C = NaN) is left out of the mean: the cell says "over 2 of 3 folds"."""
    root, args, _, _, _ = built
    summary = pd.read_csv(args["inputs"].summary, sep="\t")
    summary.loc[summary["cancer"] == "AAA", "c_index_folds"] = "0.7000,nan,0.6000"
    summary.loc[summary["cancer"] == "AAA", "c_index_mean"] = 0.65
    summary.to_csv(tmp_path / "summary.tsv", sep="\t", index=False)
    roupkt = summary.assign(c_index_folds="nan,0.5000,nan", model="roupkt")
    roupkt.loc[roupkt["cancer"] == "BBB", "c_index_folds"] = "0.5000,0.6000,0.7000"
    roupkt.to_csv(tmp_path / "roupkt.tsv", sep="\t", index=False)
    out = tmp_path / "index.html"
    build_report(replace(args["inputs"], summary=tmp_path / "summary.tsv", roupkt=tmp_path / "roupkt.tsv"),
                 ReportOutputs(out), args["settings"])
    html = out.read_text()
    experts = {m[0]: m[1] for m in re.findall(r"<tr><td>(\w+)</td><td>\d+</td><td data-c[^>]*>([^<]*(?:<span[^>]*>[^<]*</span>)?)</td>",
                                               _table(html, "expert-table"))}
    assert "over 2 of 3 folds" in experts["AAA"] and "over" not in experts["BBB"] + experts["CCC"], experts
    rows = dict(re.findall(r"<tr><td>(\w+)</td>(.*?)</tr>", _table(html, "roupkt-table")))
    assert rows["AAA"].count("over 2 of 3 folds") == 1 and "over 1 of 3 folds" in rows["AAA"]  # own expert; ROUPKT
    assert "over" not in rows["BBB"] and "over 1 of 3 folds" in rows["CCC"]
    assert "over the 3 folds:" not in _table(html, "roupkt-table")


def test_slides_are_counted_per_patient_and_cancer(built, tmp_path):
    """A patient listed under two cancers: each cancer counts only the slides listed under it."""
    _, args, _, _, _ = built
    samples = pd.read_csv(args["inputs"].samples, sep="\t")
    own = int((samples["cancer"] == "AAA").sum())
    other = dict(samples.iloc[0], slide_id="AAA-000-01Z-00-DX9", cancer="BBB")  # AAA-000 also listed under BBB
    pd.concat([samples, pd.DataFrame([other])]).to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    numbers = build_report(replace(args["inputs"], samples=tmp_path / "samples.tsv"), ReportOutputs(tmp_path / "i.html"),
                           args["settings"])
    cohort = numbers["cohort"].set_index("cancer")
    assert cohort.at["AAA", "slides"] == own == cohort.at["AAA", "patients"]  # one slide per analysed patient


def test_cancers_left_out_before_any_job_are_shown_with_their_reason(built, tmp_path):
    _, args, _, html, _ = built
    assert 'id="excluded-cancers"' not in html
    why = "no OS event among its 9 labelled patients: the C-index is undefined on every fold"
    build_report(args["inputs"], ReportOutputs(tmp_path / "i.html"), replace(args["settings"], excluded_cancers={"ZZZ": why}))
    table = _table((tmp_path / "i.html").read_text(), "excluded-cancers")
    assert re.findall(r"<tr><td>(\w+)</td><td[^>]*>([^<]*)</td></tr>", table) == [("ZZZ", why)]


def test_harrell_c_batch_equals_sksurv():
    from sksurv.metrics import concordance_index_censored

    rng = np.random.default_rng(1)
    for _ in range(20):
        n = 25
        t = rng.integers(1, 12, n).astype(float)  # many tied times
        e = rng.random(n) < 0.6
        r = np.round(rng.normal(size=n), 1)  # tied risks
        if e.sum() == 0:
            continue
        ref = concordance_index_censored(e, t, r)[0]
        assert harrell_c_batch(t, e, r)[0] == pytest.approx(ref, abs=1e-12)


def test_bootstrap_ci_contains_mean_and_is_reproducible(built):
    _, args, _, _, _ = built
    folds = [f for f in load_fold_predictions(args["inputs"].predictions) if f.cancer == "AAA"]
    a, b = bootstrap_c_index(folds, n_boot=300, seed=3), bootstrap_c_index(folds, n_boot=300, seed=3)
    assert (a.low, a.high) == (b.low, b.high)
    assert a.low <= a.mean <= a.high and a.high - a.low > 0.01 and a.n_valid == 300


def test_logrank_p_equals_lifelines(built):
    from lifelines.statistics import logrank_test

    _, args, _, html, numbers = built
    folds = [f for f in load_fold_predictions(args["inputs"].predictions) if f.cancer == "BBB"]
    high, time, event = [], [], []
    for f in folds:
        t = f.table[f.table["split"] == "test"]
        high += list(t["risk"] > t["risk"].median())
        time += list(t["time"])
        event += list(t["event"])
    high, time, event = np.array(high), np.array(time), np.array(event)
    ref = logrank_test(time[high], time[~high], event[high], event[~high]).p_value
    assert risk_groups(folds).p_value == pytest.approx(ref, rel=1e-12)
    shown = dict(re.findall(r'<tr><td>(\w+)</td>.*?data-p="([^"]+)"', _table(html, "expert-table")))
    assert float(shown["BBB"]) == pytest.approx(ref, rel=1e-5)


def test_td_auc_and_ibs_equal_sksurv(built):
    from sksurv.metrics import cumulative_dynamic_auc, integrated_brier_score
    from sksurv.util import Surv

    _, args, _, html, numbers = built
    f = next(f for f in load_fold_predictions(args["inputs"].predictions) if f.cancer == "AAA" and f.fold == 1)
    m = fold_time_metrics(f)
    assert np.isfinite(m.mean_auc) and np.isfinite(m.ibs) and len(m.times) >= 2
    tr, te = f.train, f.test
    horizon = tr["time"].max()
    t_te = np.minimum(te["time"].to_numpy(float), horizon)
    e_te = te["event"].astype(bool).to_numpy() & (te["time"].to_numpy() <= horizon)
    y_tr, y_te = Surv.from_arrays(tr["event"].astype(bool), tr["time"]), Surv.from_arrays(e_te, t_te)
    _, ref_auc = cumulative_dynamic_auc(y_tr, y_te, te["risk"].to_numpy(), m.times)
    ref_ibs = integrated_brier_score(y_tr, y_te, survival_at(te[f.survival_columns()].to_numpy(), f.inner_edges, m.times), m.times)
    assert m.mean_auc == pytest.approx(ref_auc, rel=1e-12) and m.ibs == pytest.approx(ref_ibs, rel=1e-12)
    assert m.times.min() >= t_te[e_te].min() and m.times.max() < min(t_te.max(), horizon)
    # the page shows the mean over folds of these per-fold values
    per_fold = [fold_time_metrics(g) for g in load_fold_predictions(args["inputs"].predictions) if g.cancer == "AAA"]
    shown = dict(re.findall(r'<tr><td>(\w+)</td>.*?data-ibs="([^"]+)"', _table(html, "expert-table")))
    assert float(shown["AAA"]) == pytest.approx(np.mean([p.ibs for p in per_fold]), abs=5e-5)


def test_survival_at_is_a_step_function_of_the_bin_edges():
    surv = np.array([[0.9, 0.7, 0.4]])
    edges = np.array([365.0, 730.0])
    got = survival_at(surv, edges, np.array([0, 364, 365, 700, 730, 5000]))
    assert got.tolist() == [[1.0, 1.0, 0.9, 0.9, 0.7, 0.7]]


def test_too_few_events_shows_dash_not_crash(tmp_path):
    table = pd.DataFrame({"patient_id": list("abcdef"), "fold": 0, "split": ["train"] * 3 + ["test"] * 3,
                          "time": [100.0, 200, 300, 150, 250, 350], "event": [1, 1, 0, 0, 1, 0],
                          "risk": [3.0, 2, 1, 2, 1, 0], "S_0": 0.5, "S_1": 0.2})
    m = fold_time_metrics(FoldPredictions("ZZZ", 0, table, np.array([365.0])))
    assert np.isnan(m.ibs) and np.isnan(m.mean_auc) and "test events" in m.reason


def test_bin_edges_come_from_the_folds_metrics_json_not_its_checkpoint(tmp_path):
    fold = tmp_path / "ZZZ" / "fold0"
    fold.mkdir(parents=True)
    table = pd.DataFrame({"patient_id": ["007", "a"], "fold": 0, "split": ["train", "test"], "time": [1.0, 2.0],
                          "event": [1, 0], "risk": [1.0, 0.0], "S_0": 0.5, "S_1": 0.2, "S_2": 0.1, "S_3": 0.0})
    table.to_csv(fold / "predictions.tsv", sep="\t", index=False)
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        load_fold_predictions([fold / "predictions.tsv"])
    (fold / "metrics.json").write_text('{"cancer": "ZZZ", "inner_edges": [10.0, 20.0, 40.0]}')
    (f,) = load_fold_predictions([fold / "predictions.tsv"])
    assert f.inner_edges.tolist() == [10.0, 20.0, 40.0] and f.cancer == "ZZZ" and f.table["patient_id"][0] == "007"


def test_runtime_sums_benchmarks_per_stage_without_the_report(built):
    _, args, _, _, _ = built
    rt = runtime_per_stage(args["inputs"].benchmarks).set_index("stage")
    assert list(rt.index) == ["preprocess", "experts"]
    assert rt.at["preprocess", "total_s"] == pytest.approx(2 + 3 + 4) and rt.at["experts", "jobs"] == 4


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
def test_report_in_a_real_browser(built, tmp_path):
    root, _, html_path, html, _ = built
    shot = check_in_browser(html_path, tmp_path)
    print(f"screenshot: {shot}")


def test_finetuned_matrix_is_shown_beside_the_zero_shot_one_when_present(built, tmp_path):
    _, args, _, html, _ = built
    assert "finetuned-head" not in html  # not run: not shown
    zero = pd.read_csv(args["inputs"].matrix, sep="\t")
    off = zero[zero["source"] != zero["target"]]
    ft = pd.concat([off.assign(method="head", c_index_mean=0.61), off.assign(method="all", c_index_mean=0.72)])
    ft[["method", "source", "target", "c_index_mean", "c_index_sd", "n"]].to_csv(tmp_path / "ft.tsv", sep="\t", index=False)
    out = tmp_path / "index.html"
    build_report(replace(args["inputs"], finetuned=tmp_path / "ft.tsv"), ReportOutputs(out), args["settings"])
    page = out.read_text()
    for method, value in (("head", 0.61), ("all", 0.72)):
        cells = re.findall(r'data-c="(\d\.\d+)"', _table(page, f"finetuned-{method}"))
        assert len(cells) == len(off) and {float(c) for c in cells} == {value}


def test_page_without_a_transfer_matrix_says_it_was_not_run(built, tmp_path):
    """transfer.matrix false: no matrix.tsv or matrix_ci.tsv; the page leaves out the transfer table, heatmap,
    positive-transfer sets and matrix CIs, says why in one sentence, and keeps every other section."""
    _, args, _, full, _ = built
    inputs = replace(args["inputs"], matrix=None, matrix_ci=None)
    out = tmp_path / "index.html"
    numbers = build_report(inputs, ReportOutputs(out, km=tmp_path / "km.png"), args["settings"])
    page = out.read_text()
    assert numbers["matrix"] is None and numbers["positives"] is None
    for absent in ('id="transfer-table"', 'id="heatmap-figure"', 'id="positive-table"', "every other cancer"):
        assert absent in full and absent not in page, absent
    (note,) = re.findall(r'<p class="muted" id="no-transfer-matrix">(.*?)</p>', page)
    assert "transfer matrix was not run" in note and "<code>transfer.matrix: false</code>" in note
    assert 'id="no-transfer-matrix"' not in full
    assert page.count("data:image/png;base64,") == full.count("data:image/png;base64,") - 1  # no transfer heatmap
    assert _table(page, "expert-table") == _table(full, "expert-table") and (tmp_path / "km.png").stat().st_size
    assert "No benchmark files for: acquire, features, labels, splits." in page  # transfer is not missing: not run
    with pytest.raises(ValueError, match="transfer.matrix false"):
        build_report(inputs, ReportOutputs(tmp_path / "i.html", heatmap=tmp_path / "hm.png"), args["settings"])


def test_page_states_the_split_strategy_and_counts_pooled_projects_as_one_cancer(built, tmp_path):
    """splits.strategy is named in the run facts; a cancer_groups member's slides count under its group."""
    _, args, _, html, _ = built
    assert "folds stratified by event" in html.split('id="split-strategy">')[1].split("</dd>")[0]
    samples = pd.read_csv(args["inputs"].samples, sep="\t")
    own = int((samples["cancer"] == "AAA").sum())
    samples.loc[samples.index[samples["cancer"] == "AAA"][::2], "cancer"] = "AAP"  # half of AAA's slides: another project
    samples.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    config = {**args["settings"].config, "cancer_groups": {"AAA": ["TCGA-AAA", "TCGA-AAP"]},
              "experts": {"folds": 3}, "splits": {"strategy": "site"}}
    numbers = build_report(replace(args["inputs"], samples=tmp_path / "samples.tsv"), ReportOutputs(tmp_path / "i.html"),
                           replace(args["settings"], config=config))
    assert numbers["cohort"].set_index("cancer").at["AAA", "slides"] == own
    page = (tmp_path / "i.html").read_text()
    assert page.split('id="split-strategy">')[1].split("</dd>")[0].startswith("3-fold patient-level cross-validation with site-preserved folds")
    assert "AAA = AAA + AAP" in page


def test_split_text_names_each_strategy():
    from wsikt.report.build import split_text

    assert split_text({}) == "5-fold patient-level cross-validation (folds stratified by event)"
    assert "with site-preserved folds" in split_text({"experts": {"folds": 4}, "splits": {"strategy": "site"}})
    assert split_text({"splits": {"strategy": "external", "test_cohorts": ["CPTAC"]}}) == (
        "training on every cohort but CPTAC and testing on that external cohort (one fold)")
    assert "on the given fold files (s/{cancer}_{fold}.csv)" in split_text(
        {"splits": {"strategy": "files", "files": "s/{cancer}_{fold}.csv"}})
def test_experts_show_their_chance_reference(built):
    _, args, _, html, _ = built
    chance = read_stats_table(args["inputs"].chance, "chance").set_index("cancer")
    cells = re.findall(r'<tr><td>(\w+)</td>.*?data-perm-p="([^"]+)" data-null-mean="([^"]+)"', _table(html, "expert-table"))
    assert [c[0] for c in cells] == list(chance.index)
    for cancer, p, mean in cells:
        assert float(p) == pytest.approx(chance.at[cancer, "p_above"], rel=1e-5)
        assert float(mean) == pytest.approx(chance.at[cancer, "null_mean"], abs=1e-4)
        assert abs(float(mean) - 0.5) < 0.05
    assert 'id="chance-note"' in html and "300 random rankings" in html


def test_matrix_cells_show_their_ci_and_below_chance_flags(built):
    _, args, _, html, _ = built
    ci = read_stats_table(args["inputs"].matrix_ci, "matrix_ci").set_index(["source", "target"])
    rows = dict(re.findall(r"<tr><td>(\w+)</td>(.*?)</tr>", _table(html, "transfer-table")))
    targets = sorted({t for _, t in ci.index})
    for source, row in rows.items():
        tds = re.findall(r"<td[^>]*>(.*?)</td>", row)
        for target, td in zip(targets, tds):
            lo, hi = map(float, re.search(r'data-lo="([^"]+)" data-hi="([^"]+)"', td).groups())
            assert (lo, hi) == pytest.approx((ci.at[(source, target), "ci_low"], ci.at[(source, target), "ci_high"]), abs=1e-4)
            assert ("below chance" in td) == bool(ci.at[(source, target), "below_chance"])
    assert ci.at[("AAA", "BBB"), "below_chance"] and "below chance" in rows["AAA"]  # the planted reversed cell
    assert not ci.at[("BBB", "BBB"), "below_chance"] and ci.at[("BBB", "BBB"), "ci_low"] > 0.5


def test_roupkt_and_baselines_show_paired_intervals_and_flag_below_chance(built, tmp_path):
    """ROUPKT ranks CCC backwards: its Δ is flagged below chance; the head baseline equals the expert (Δ 0, CI [0, 0]).

    (The synthetic experts' risks ignore the labels, so an expert may itself land below chance: flags follow the table.)"""
    root, args, _, _, _ = built
    preds = {"expert": args["inputs"].predictions, "roupkt": [], "head": []}
    for p in args["inputs"].predictions:
        for method in ("roupkt", "head"):
            d = tmp_path / method / p.parent.relative_to(root)
            d.mkdir(parents=True)
            table = pd.read_csv(p, sep="\t")
            if method == "roupkt" and "/CCC/" in str(p):
                table["risk"] = table["time"]  # longer survival, higher risk: C far below 0.5
            table.to_csv(d / "predictions.tsv", sep="\t", index=False)
            (d / "metrics.json").write_text((p.parent / "metrics.json").read_text())
            preds[method].append(d / "predictions.tsv")
    settings = StatsSettings(chance_permutations=300, n_boot=300)
    chance = chance_table(preds, settings)
    compare = compare_table(preds, settings, chance)
    write_stats_table(chance, "chance", tmp_path / "chance.tsv")
    write_stats_table(compare, "compare", tmp_path / "compare.tsv")
    summary = pd.read_csv(args["inputs"].summary, sep="\t")
    for name, model in (("roupkt", "roupkt"), ("head", "baseline_head")):
        c = chance[chance["method"] == name].set_index("cancer")["c_index_mean"]
        summary.assign(c_index_mean=summary["cancer"].map(c), model=model).to_csv(tmp_path / f"{name}.tsv", sep="\t", index=False)
    out = tmp_path / "index.html"
    inputs = replace(args["inputs"], roupkt=tmp_path / "roupkt.tsv", baselines={"head": tmp_path / "head.tsv"},
                     chance=tmp_path / "chance.tsv", compare=tmp_path / "compare.tsv")
    build_report(inputs, ReportOutputs(out), args["settings"])
    rows = dict(re.findall(r"<tr><td>(\w+)</td>(.*?)</tr>", _table(out.read_text(), "roupkt-table")))
    cmp = compare.set_index(["method", "cancer"])
    for cancer, row in rows.items():
        lo, hi = map(float, re.search(r'data-lo="([^"]+)" data-hi="([^"]+)"', row).groups())
        assert (lo, hi) == pytest.approx((cmp.at[("roupkt", cancer), "ci_low"], cmp.at[("roupkt", cancer), "ci_high"]), abs=1e-4)
        head = re.search(r'data-method="head" data-lo="([^"]+)" data-hi="([^"]+)"', row).groups()
        assert [float(v) for v in head] == [0.0, 0.0]
        flagged = cmp.at[("roupkt", cancer), "below_chance"] or cmp.at[("head", cancer), "below_chance"]
        assert ("below chance" in row) == flagged, (cancer, row)
    assert cmp.at[("roupkt", "CCC"), "below_chance"] and cmp.at[("roupkt", "CCC"), "ci_high"] < 0
    if CHROMIUM.exists():  # the page with every statistics column still loads cleanly in a real browser
        print(f"screenshot: {check_in_browser(out, tmp_path)}")


def test_retrained_null_is_shown_beside_the_cheap_one(built, tmp_path):
    """stats.permutations > 0: each expert's retrained null (pooled per permutation) and its p are in the table."""
    _, args, _, _, _ = built
    rng = np.random.default_rng(5)
    paths = []
    for cancer in ("AAA", "BBB", "CCC"):
        rows = pd.DataFrame([{"method": "expert", "cancer": cancer, "permutation": p, "fold": k,
                              "c_index_test": float(rng.uniform(0.3, 0.7)), "null": bool(k == 0)}
                             for p in range(4) for k in range(3)])
        write_stats_table(rows, "retrained_null", tmp_path / f"{cancer}.tsv")
        paths.append(tmp_path / f"{cancer}.tsv")
    out = tmp_path / "index.html"
    build_report(replace(args["inputs"], retrained=paths), ReportOutputs(out), args["settings"])
    table = _table(out.read_text(), "expert-table")
    chance = read_stats_table(args["inputs"].chance, "chance").set_index("cancer")
    found = re.findall(r'<tr><td>(\w+)</td>.*?data-retrained-p="([^"]+)"', table)
    assert [c for c, _ in found] == ["AAA", "BBB", "CCC"]
    for cancer, p in found:
        rows = pd.read_csv(tmp_path / f"{cancer}.tsv", sep="\t")
        null = rows.groupby("permutation")["c_index_test"].mean().to_numpy()
        assert float(p) == pytest.approx((1 + (null >= chance.at[cancer, "c_index_mean"] - 1e-12).sum()) / 5, rel=1e-5)
    assert "4 refits" in table
