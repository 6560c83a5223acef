# Peers (DESIGN.md, "Peers"; bcr/peers/): kvpress's presses on the same prompts, in the peer
# environment (.venv-peers), at the stored fractions the sweep and the frontier measured for our
# settings; then every press's rows beside ours.  Without a `peers` section nothing here runs.
from bcr.peers import plan as peers_plan

PEERS_CFG = config.get("peers")
PEER_CONTEXTS = peers_plan.peer_contexts(config) if PEERS_CFG else []
PEER_FAMILIES = PROMPT_FAMILIES if PEERS_CFG else []


rule peers_run:
    """Every configured press on one family's prompts at the peer contexts, both modes."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        model=model_checkpoint_files(),
        prompts=expand(rules.build_prompts.output[0], context=PEER_CONTEXTS, allow_missing=True),
        dense=expand(rules.dense_baseline.output[0], context=PEER_CONTEXTS, allow_missing=True),
        promoted=expand(rules.tiered_promote.output.promoted, mode=TIERED_MODES, allow_missing=True),
        summary=expand(rules.tiered_promote.output.summary, mode=TIERED_MODES, allow_missing=True),
        frontier=(
            expand(rules.tiered_frontier.output, model=PRIMARY_MODEL, allow_missing=True)
            if TIERED_FRONTIER_MODELS
            else []
        ),
    output:
        C.PEERS_RUNS.path(),
    wildcard_constraints:
        workload=PROMPT_FAMILY_NAMES,
    params:
        code=command_hash("peers", "run"),
        cfg=section_hash("peers", "generation", "runtime", "model"),
        prompts=lambda w, input: key_path_pairs(PEER_CONTEXTS, input.prompts),
        dense=lambda w, input: key_path_pairs(PEER_CONTEXTS, input.dense),
        promoted=lambda w, input: key_path_pairs(TIERED_MODES, input.promoted),
        summary=lambda w, input: key_path_pairs(TIERED_MODES, input.summary),
        frontier=lambda w, input: key_path_pairs(TIERED_MODES, input.frontier) if input.frontier else "",
    benchmark:
        benchmark_path("peers_run", "{workload}")
    log:
        "logs/peers/{workload}.log",
    threads: lambda w: TIMED_THREADS if peers_plan.timed(config, w.workload) else THREADS
    resources:
        runtime=120,
        mem_mb=32000,
    shell:
        "bcr peers run --config {input.cfg} --workload {wildcards.workload} --prompts {params.prompts} "
        "--dense {params.dense} --promoted {params.promoted} --summary {params.summary} "
        "--frontier {params.frontier} --out {output} > {log} 2>&1"


rule peers_compare:
    """Every press's rows beside ours: the matched settings' sweep, frontier and promotion rows."""
    conda:
        BCR_ENV
    input:
        runs=expand(rules.peers_run.output[0], workload=PEER_FAMILIES),
        sweep=expand(rules.tiered_sweep.output, workload=PEER_FAMILIES),
        frontier=expand(
            rules.tiered_frontier.output, model=TIERED_FRONTIER_MODELS[:1], workload=PEER_FAMILIES
        ),
        promotion=expand(
            rules.tiered_promotion.output.runs,
            workload=PEER_FAMILIES,
            mode=TIERED_MODES,
            context=[c for c in PEER_CONTEXTS if c in TIERED_PROMOTION_CONTEXTS],
        ),
    output:
        C.PEERS.path(),
    params:
        code=command_hash("peers", "compare"),
    benchmark:
        benchmark_path("peers_compare")
    log:
        "logs/peers/compare.log",
    resources:
        runtime=10,
        mem_mb=4000,
    shell:
        "bcr peers compare --runs {input.runs} --tiered {input.sweep} {input.frontier} {input.promotion} "
        "--out {output} > {log} 2>&1"
