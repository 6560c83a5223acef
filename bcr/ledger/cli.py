"""``bcr site ...``: evaluate the claim ledger, build the site, name the site's mike version."""

from __future__ import annotations

import argparse
from pathlib import Path

from bcr.cliutil import add_config_arg, load_config

DEFAULTS = {"claims": "config/claims.yaml", "reference": "config/reference.yaml"}


def register(tracks: argparse._SubParsersAction) -> None:
    site = tracks.add_parser("site", help="claim ledger and the MkDocs results site").add_subparsers(
        dest="command", required=True
    )
    p = site.add_parser("ledger", help="evaluate every claim in the claim file on the results")
    add_config_arg(p)
    p.add_argument("--claims", default=DEFAULTS["claims"])
    p.add_argument("--results", default="results")
    p.add_argument("--out", default="results/ledger.parquet")
    p.add_argument(
        "--benchmarks", help="also gather every job's benchmark under --results into this Parquet file"
    )
    p.set_defaults(func=cmd_ledger)

    p = site.add_parser("build", help="render pages into results/site_src and run mkdocs build --strict")
    add_config_arg(p)
    p.add_argument("--repo", default=".", help="repository root (holds mkdocs.yml and site/)")
    p.add_argument("--results", default="results")
    p.add_argument("--ledger", default="results/ledger.parquet")
    p.add_argument("--claims", default=DEFAULTS["claims"])
    p.add_argument("--reference", default=DEFAULTS["reference"])
    p.set_defaults(func=cmd_build)

    p = site.add_parser("freeze", help="`pip freeze` of the run's environments into results/run/freeze/")
    add_config_arg(p)
    p.add_argument("--results", default="results")
    p.set_defaults(func=cmd_freeze)

    p = site.add_parser("failures", help="the failed jobs of the last run, with their log tails")
    p.add_argument("--snakemake-log", help="a Snakemake log (default: the newest under .snakemake/log)")
    p.add_argument("--root", default=".", help="the run's directory (job logs are relative to it)")
    p.add_argument("--out", default="results/run/failed_jobs.json")
    p.set_defaults(func=cmd_failures)

    p = site.add_parser("version", help="print the mike version of a results run (run_name-commit)")
    add_config_arg(p)
    p.add_argument("--ledger", default="results/ledger.parquet")
    p.set_defaults(func=cmd_version)


def cmd_ledger(args: argparse.Namespace) -> int:
    from bcr import io, provenance
    from bcr.ledger.benchmarks import gather
    from bcr.ledger.claims import evaluate, ledger_with_provenance, load_claims
    from bcr.ledger.evidence import load_results

    config = load_config(args)
    spec = load_claims(args.claims)
    ledger = evaluate(spec, load_results(args.results, config["model"]["name"]), config)
    io.write_parquet(ledger_with_provenance(ledger, config), args.out)
    if args.benchmarks:  # what every job of the run cost so far (the ledger runs after the others)
        bench = gather(Path(args.results))
        prov = provenance.provenance(config, config["runtime"]["device"])
        io.write_parquet(provenance.attach(bench, prov), args.benchmarks)
        print(f"{len(bench)} job benchmarks -> {args.benchmarks}")
    width = max(len(c) for c in ledger["claim_id"])
    for r in ledger.itertuples():
        print(f"{r.claim_id:<{width}}  {r.verdict:<9}  {r.value_text}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    import yaml

    from bcr import io
    from bcr.ledger.claims import load_claims
    from bcr.ledger.evidence import load_results
    from bcr.ledger.site import build

    config = load_config(args)
    index = build(
        Path(args.repo).resolve(),
        load_results(Path(args.results).resolve(), config["model"]["name"]),
        config,
        io.read_parquet(args.ledger, ["claim_id", "verdict"]),
        load_claims(args.claims),
        yaml.safe_load(Path(args.reference).read_text()),
    )
    print(f"site built: {index}")
    return 0


def cmd_freeze(args: argparse.Namespace) -> int:
    from bcr import contracts as C
    from bcr import io
    from bcr.environments import freezes, summary

    config = load_config(args)
    peers = config.get("peers")
    python = None
    if peers:
        from bcr.peers.plan import peer_python

        python = peer_python(config)
    for name, text in freezes(python).items():
        out = Path(args.results) / C.RUN_FREEZE.pattern.format(environment=name)
        io.write_text(text, out)
        s = summary(text)
        what = f"{s['packages']} packages" if s["packages"] is not None else s["reason"]
        print(f"{name}: {what} -> {out}")
    return 0


def cmd_failures(args: argparse.Namespace) -> int:
    from bcr import io
    from bcr.ledger.failures import latest_log, parse

    root = Path(args.root)
    log = Path(args.snakemake_log) if args.snakemake_log else latest_log(root)
    if log is None or not log.is_file():
        raise SystemExit(f"no Snakemake log to read ({log or root / '.snakemake/log'})")
    jobs = parse(log.read_text(errors="replace"), root)
    io.write_json({"snakemake_log": str(log), "jobs": jobs}, args.out)
    for job in jobs:
        print(
            f"failed: rule {job['rule']} -> {', '.join(job['output']) or '(no output)'}; log {', '.join(job['log'])}"
        )
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from bcr import io
    from bcr.ledger.version import ledger_version

    print(ledger_version(io.read_parquet(args.ledger, ["claim_id", "git_commit"]), load_config(args)))
    return 0
