"""What the commands print: the run summary, auto's summary and the findings, and `--json`."""

from __future__ import annotations

from typing import Any


def headline_metric(m: dict[str, Any]) -> str:
    """The run's headline metric (runs saved before ``metric`` existed: their score)."""
    return str(m.get("metric") or m["score_name"])


def summary_json(m: dict[str, Any]) -> dict[str, Any]:
    """The stable ``--json`` contract of ``fitwell train``."""
    from fitwell.runs import json_safe

    return json_safe(
        {
            "run_dir": m.get("run_dir"),
            "task": m["task"],
            "metric": headline_metric(m),
            "test_score": m.get("test_score"),
            "test": m["test"],
            "best_epoch": m["best_epoch"],
            "epochs_run": m["epochs_run"],
            "stop_reason": m["stop_reason"],
            "restarts": {"val_scores": m["restarts"]["val_scores"], "best": m["restarts"]["best"]},
            "ensemble": m.get("ensemble", {}).get("members", [m["restarts"]["best"]]),
            "l1_zeroed_features": m["l1_zeroed_features"],
            "findings": m["findings"],
            "target_score": m["target_score"],
            "target_met": m["target_met"],
        }
        | ({"mlflow": m["mlflow"]} if m.get("mlflow") else {})
    )


def print_summary(m: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    d = m["data"]
    rows = d["rows"]
    console.print(
        f"[bold]fitwell[/] · {d['source']} · {m['task']} · target {d['target']!r} · "
        f"{rows['train']} train / {rows['val']} val / {rows['test']} test rows"
    )
    score = m["score_name"]
    test = m["test"]
    metric = headline_metric(m)
    headline = m.get("test_score")
    shown = "undefined" if headline is None or headline != headline else f"{headline:.4f}"
    line = f"test {metric} [bold]{shown}[/]"
    if m["task"] == "classification":
        others = [("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy")]
        others += [("macro_f1", "macro-F1")]
        if metric != "log_loss":  # the same number twice otherwise
            line += f" (loss {test['loss']:.4f})"
        for key, label in others:
            # runs saved before balanced accuracy and macro-F1 were measured lack them
            if key != metric and test.get(key) is not None:
                line += f" · {label} {test[key]:.4f}"
    else:
        for key in ("r2", "rmse", "mae"):
            if key != metric:
                line += f" · {key} {test[key]:.4g}"
    if m["target_score"] is not None:
        ok = "[green]met[/]" if m["target_met"] else "[red]missed[/]"
        bound = "at least" if m.get("metric_higher_is_better", True) else "at most"
        line += f" · target {bound} {m['target_score']:g} {ok}"
    console.print(line)
    console.print(
        f"train {score} {m['train'][score]:.4f} · val {score} {m['val'][score]:.4f} at epoch "
        f"{m['best_epoch']} of {m['epochs_run']} · {m['stop_reason']}"
        + (" · best weights restored" if m["restored_best_weights"] else "")
    )
    # With a chosen metric the members were ranked by it: show it where the score was.
    by_metric = f"val_{metric}" in m["restarts"]
    ranked = m["restarts"][f"val_{metric}"] if by_metric else m["restarts"]["val_scores"]
    scores = [s for s in ranked if s is not None and s == s]
    if len(m["restarts"]["val_scores"]) > 1 and scores:
        console.print(
            f"restarts: {len(m['restarts']['val_scores'])} members, "
            f"val {metric if by_metric else score} "
            f"{min(scores):.4f}–{max(scores):.4f}, "
            + ("best" if len(m.get("ensemble", {}).get("members", [])) > 1 else "kept")
            + f" member {m['restarts']['best']}"
        )
    members = m.get("ensemble", {}).get("members", [])
    if len(members) > 1:
        val = m["ensemble"]["val"]
        shown_score = metric if metric in val else score
        console.print(
            f"ensemble: predictions averaged over members {', '.join(map(str, members))} · "
            f"val {shown_score} {val[shown_score]:.4f} (loss {val['loss']:.4f})"
        )
    if m["l1_zeroed_features"]:
        names = ", ".join(m["l1_zeroed_features"][:20])
        more = len(m["l1_zeroed_features"]) - 20
        console.print(
            f"not read by the model: {len(m['l1_zeroed_features'])} input column(s) "
            f"switched off in every member: {names}" + (f" … (+{more})" if more > 0 else "")
        )
    print_findings(m.get("findings", []))
    if m.get("run_dir"):
        console.print(f"run directory: {m['run_dir']}")
    if m.get("mlflow"):
        t = m["mlflow"]
        console.print(
            f"mlflow: run {t['run_id']} in experiment {t['experiment']!r} at {t['tracking_uri']}"
            + (f" · {t['url']}" if t.get("url") else "")
        )


def print_auto_summary(m: dict[str, Any]) -> None:
    """What auto did: leakage first, then repairs kept, the search, and the winner."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    record = m["auto"]
    if any(
        f.get("code") == "leakage" and f.get("severity") in ("error", "warning")
        for f in m.get("findings", [])
    ):
        console.print(
            "[red]error[/] [bold]leakage[/]: test rows also occur in the training "
            "rows; the test score below overstates what the model does on new data"
        )
    kept = [r for r in record["repairs"] if r.get("kept")]
    # Several changes of one round may pass the rule; only the best of them is applied.
    applied = [r for r in kept if r.get("chosen") or r.get("reason", "").startswith("applied")]
    tried = len(record["repairs"])
    console.print(
        f"[bold]auto[/] · {record.get('seconds_used', 0):.0f} s of "
        + (f"{record['budget_seconds']:.0f} s" if record.get("budget_seconds") else "no time limit")
        + f" · repairs tried {tried}, passed {len(kept)}, applied {len(applied)}"
        + "".join(f" · {r['finding']} → {r['change']}" for r in applied)
    )
    for st in (record.get("baseline") or {}).get("starts") or []:
        if st.get("gain") is None:
            console.print(f"start {st['start']}: not compared ({st.get('reason', '')})")
        else:
            console.print(
                f"start {st['start']}: {st['measure']} {st['value']:.4g} vs the defaults' "
                f"{st['defaults_value']:.4g} (gain {st['gain']:.4g}, noise margin "
                f"{st['margin']:.4g}) · " + ("started from it" if st["kept"] else "not used")
            )
    s = record.get("search") or {}
    if s:
        console.print(
            f"search: {s['trials']} trials in {s['populations']} populations "
            f"({s['complete']} complete, {s['pruned']} pruned, {s['failed']} failed) · "
            + (
                f"best trial {s['best_trial']} val loss {s['best_val_loss']:.4g}"
                if s.get("best_trial") is not None
                else "no completed trial"
            )
        )
    console.print(f"winner: {record['winner']}")


def print_findings(findings: list[dict[str, Any]], *, stderr: bool = False) -> None:
    """One line per finding: severity, code, where, advice, and the evidence that triggered it."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True, stderr=stderr)
    colour = {"error": "red", "warning": "yellow", "info": "cyan"}
    for f in findings:
        severity = str(f.get("severity", "info"))
        where = ", ".join(
            f"{k} {f[k]}" for k in ("epoch", "layer", "member") if f.get(k) is not None
        )
        evidence = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in (f.get("evidence") or {}).items()
            if not isinstance(v, list)
        )
        console.print(
            f"[{colour.get(severity, 'yellow')}]{severity}[/] [bold]{f.get('code')}[/]"
            + (f" ({where})" if where else "")
            + f": {f.get('advice', '')}"
            + (f" [dim]· {evidence}[/]" if evidence else "")
        )
