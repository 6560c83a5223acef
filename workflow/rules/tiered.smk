# Tiered compression (DESIGN.md, "Tiered compression"): per prompt family, one sweep job at the first
# context runs every sweep setting in every query mode from one shared prefill per prompt; a
# checkpoint per (family, mode) decides which settings run at the promotion contexts
# ({family}/promoted/{mode}.json), from the sweep's rows or the config's validated override, never
# from a hand-written list.
from bcr.tiered import settings as tiered_settings
from bcr.tiered import frontier as tiered_frontier
from bcr.tiered import workflow as tiered_workflow
from bcr import headline as headline_rule

TIERED_SWEEP_CONTEXT = tiered_settings.sweep_context(config)
TIERED_PROMOTION_CONTEXTS = tiered_settings.promotion_contexts(config)
TIERED_TIMED_CONTEXTS = tiered_settings.timed_contexts(config)
HEADLINE_RULE_HASH = bcr_config.config_hash(headline_rule.read_rule(CLAIMS_FILE))
TIERED_SWEEP = tiered_settings.sweep_settings(config)
TIERED_MODES = list(config["tiered"]["query_modes"])
TIERED_MODE_NAMES = "|".join(TIERED_MODES)
# Exactness is decided on the first decode path (the sweep, the controls, the frontier); the
# promotion runs measure every path of tiered.decode_paths beside it.
TIERED_DECIDING_PATH = config["tiered"]["decode_paths"][0]
# Negative controls run where the sweep decides and where the headline claims are made.
TIERED_CONTROL_CONTEXTS = (
    sorted({TIERED_SWEEP_CONTEXT, max(CONTEXTS)}) if config["tiered"].get("negative_controls") else []
)


rule tiered_sweep:
    """Every sweep setting in every mode on every sweep-context prompt (exactness, untimed)."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        prompts=expand(rules.build_prompts.output[0], context=TIERED_SWEEP_CONTEXT, allow_missing=True),
        dense=expand(rules.dense_baseline.output[0], context=TIERED_SWEEP_CONTEXT, allow_missing=True),
        ckpt=model_checkpoint_files(),
    output:
        [C.TIERED_SWEEP.path(mode=m) for m in TIERED_MODES],
    wildcard_constraints:
        workload=PROMPT_FAMILY_NAMES,
    params:
        code=command_hash("tiered", "run"),
        cfg=tiered_workflow.sweep_hash(config),
        context=TIERED_SWEEP_CONTEXT,
        settings=" ".join(TIERED_SWEEP),
        modes=" ".join(TIERED_MODES),
        path=TIERED_DECIDING_PATH,
    benchmark:
        benchmark_path("tiered_sweep", "{workload}")
    log:
        "logs/tiered_sweep/{workload}.log",
    threads: THREADS  # exactness only: nothing timed
    resources:
        runtime=90,
        mem_mb=32000,
    shell:
        "bcr tiered run --config {input.cfg} --settings {params.settings} --query-modes {params.modes} "
        "--context {params.context} --prompts {input.prompts} --dense {input.dense} --timed-prompts 0 "
        "--decode-paths {params.path} --out {output} --quiet > {log} 2>&1"


checkpoint tiered_promote:
    """Settings exact on every sweep prompt in one mode (controls checked, not promoted)."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        sweep=C.TIERED_SWEEP.path(),
    output:
        promoted=C.TIERED_PROMOTED.path(),
        summary=C.TIERED_SWEEP_SUMMARY.path(),
    wildcard_constraints:
        mode=TIERED_MODE_NAMES,
        workload=PROMPT_FAMILY_NAMES,
    params:
        code=command_hash("tiered", "promote"),
        cfg=section_hash("tiered", "prompts"),
    benchmark:
        benchmark_path("tiered_promote", "{workload}/{mode}")
    log:
        "logs/tiered_promote/{workload}/{mode}.log",
    resources:
        runtime=10,
        mem_mb=4000,
    shell:
        "bcr tiered promote --config {input.cfg} --sweep {input.sweep} --query-mode {wildcards.mode} "
        "--out {output.promoted} --summary {output.summary} > {log} 2>&1"


rule tiered_promotion_exact:
    """Exactness of every promoted setting on every prompt where the promotion job is timed: measured
    untimed, beside other jobs, so the timed job spends its reserved cores on clocks only."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        prompts=rules.build_prompts.output[0],
        dense=rules.dense_baseline.output[0],
        promoted=rules.tiered_promote.output.promoted,
        ckpt=model_checkpoint_files(),
    output:
        C.TIERED_PROMOTION_EXACT.path(),
    wildcard_constraints:
        context=r"\d+",
        mode=TIERED_MODE_NAMES,
        workload=PROMPT_FAMILY_NAMES,
    params:
        code=command_hash("tiered", "run"),
        cfg=tiered_workflow.run_hash(config),
    benchmark:
        benchmark_path("tiered_promotion_exact", "{workload}/{mode}/{context}")
    log:
        "logs/tiered_promotion_exact/{workload}/{mode}/{context}.log",
    threads: THREADS  # exactness only: nothing timed
    resources:
        runtime=180,
        mem_mb=48000,
    shell:
        "bcr tiered run --config {input.cfg} --promoted {input.promoted} --query-modes {wildcards.mode} "
        "--context {wildcards.context} --prompts {input.prompts} --dense {input.dense} --timed-prompts 0 "
        "--out {output} --quiet > {log} 2>&1"


rule tiered_promotion:
    """The settings one mode's checkpoint promoted, at a promotion context: exactness on every prompt
    from one shared prefill.  Where a latency claim is made (the primary family at the timed
    contexts), exactness comes from tiered_promotion_exact (untimed, beside other jobs) and this job
    times the headline setting alone -- chosen by the claim file's rule from those rows and the other
    promotion contexts' -- on the first tiered.timed_prompts (fresh, interleaved), its rows put in
    place of the untimed ones, whose tokens they must reproduce."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        prompts=rules.build_prompts.output[0],
        dense=rules.dense_baseline.output[0],
        promoted=rules.tiered_promote.output.promoted,
        ckpt=model_checkpoint_files(),
        exact=lambda w: (
            [C.TIERED_PROMOTION_EXACT.path(workload=w.workload, mode=w.mode, context=w.context)]
            if promotion_timed(w)
            else []
        ),
        # the headline is chosen over every promotion context up to this one (all of them at the
        # largest, where the claims are made)
        others=lambda w: (
            [
                C.TIERED_PROMOTION.path(workload=w.workload, mode=w.mode, context=c)
                for c in TIERED_PROMOTION_CONTEXTS
                if c < int(w.context)
            ]
            if promotion_timed(w)
            else []
        ),
    output:
        runs=C.TIERED_PROMOTION.path(),
        # the instrumented prompts' phases (an empty table where nothing is timed)
        decomposition=C.TIERED_PROMOTION_DECOMPOSITION.path(),
    wildcard_constraints:
        context=r"\d+",
        mode=TIERED_MODE_NAMES,
        workload=PROMPT_FAMILY_NAMES,
    params:
        code=command_hash("tiered", "run"),
        cfg=tiered_workflow.run_hash(config),
        # the claim file's headline rule picks the setting to time: it reruns the timed jobs when
        # that rule changes, not when any other claim does (so the file is not an input)
        headline=lambda w: HEADLINE_RULE_HASH if promotion_timed(w) else "",
        timed=lambda w, input: (
            f"--time-headline {CLAIMS_FILE} --exact-rows {input.exact} "
            f"--headline-rows {' '.join(input.others)}"
            if promotion_timed(w)
            else "--timed-prompts 0"
        ),
    benchmark:
        benchmark_path("tiered_promotion", "{workload}/{mode}/{context}")
    log:
        "logs/tiered_promotion/{workload}/{mode}/{context}.log",
    threads: lambda w: TIMED_THREADS if promotion_timed(w) else THREADS
    resources:
        runtime=180,
        mem_mb=48000,
    shell:
        "bcr tiered run --config {input.cfg} --promoted {input.promoted} --query-modes {wildcards.mode} "
        "--context {wildcards.context} --prompts {input.prompts} --dense {input.dense} {params.timed} "
        "--out {output.runs} --decomposition {output.decomposition} --quiet > {log} 2>&1"


rule tiered_controls:
    """Negative controls matched to one mode's promoted settings, from one shared prefill per prompt."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        prompts=rules.build_prompts.output[0],
        dense=rules.dense_baseline.output[0],
        promoted=rules.tiered_promote.output.promoted,
        ckpt=model_checkpoint_files(),
    output:
        C.TIERED_CONTROLS.path(),
    wildcard_constraints:
        context=r"\d+",
        mode=TIERED_MODE_NAMES,
        workload=PROMPT_FAMILY_NAMES,
    params:
        code=command_hash("tiered", "controls"),
        cfg=tiered_workflow.run_hash(config),
    benchmark:
        benchmark_path("tiered_controls", "{workload}/{mode}/{context}")
    log:
        "logs/tiered_controls/{workload}/{mode}/{context}.log",
    threads: THREADS  # exactness only: nothing timed
    resources:
        runtime=120,
        mem_mb=48000,
    shell:
        "bcr tiered controls --config {input.cfg} --context {wildcards.context} --prompts {input.prompts} "
        "--dense {input.dense} --promoted {input.promoted} --query-mode {wildcards.mode} --out {output} "
        "--quiet > {log} 2>&1"


rule tiered_promotion_summary:
    """The note's promotion table for one mode over whatever its checkpoint promoted."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        promoted=rules.tiered_promote.output.promoted,
        # Evaluated only after the checkpoint has run: its promoted.json says whether anything runs.
        runs=lambda w: tiered_workflow.promotion_files(
            checkpoints.tiered_promote.get(workload=w.workload, mode=w.mode).output.promoted,
            w.workload,
            w.mode,
            TIERED_PROMOTION_CONTEXTS,
        ),
    output:
        C.TIERED_PROMOTION_SUMMARY.path(),
    wildcard_constraints:
        mode=TIERED_MODE_NAMES,
        workload=PROMPT_FAMILY_NAMES,
    params:
        code=command_hash("tiered", "summarize"),
    benchmark:
        benchmark_path("tiered_promotion_summary", "{workload}/{mode}")
    log:
        "logs/tiered_promotion_summary/{workload}/{mode}.log",
    resources:
        runtime=10,
        mem_mb=4000,
    shell:
        "bcr tiered summarize --config {input.cfg} --inputs {input.runs} --out {output} > {log} 2>&1"


rule tiered_decomposition:
    """Where the time goes, per promoted setting, context and decode path, dense beside (the timed
    family's instrumented prompts, gathered from its promotion runs)."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        runs=lambda w: tiered_workflow.decomposition_files(checkpoints.tiered_promote, config, PRIMARY_FAMILY),
    output:
        C.TIERED_DECOMPOSITION.path(),
    params:
        code=command_hash("tiered", "decomposition"),
    benchmark:
        benchmark_path("tiered_decomposition")
    log:
        "logs/tiered_decomposition.log",
    resources:
        runtime=10,
        mem_mb=4000,
    shell:
        "bcr tiered decomposition --config {input.cfg} --inputs {input.runs} --out {output} > {log} 2>&1"


# The exactness frontier (bcr.tiered.frontier): tiered.frontier's grid at the sweep context, one job
# per (model, family) covering both modes from one shared prefill per prompt; untimed.  Every model
# of the config runs it; the primary's dense tokens are checked against its baseline file.
TIERED_FRONTIER_MODELS = MODEL_NAMES if config["tiered"].get("frontier") else []


rule tiered_frontier:
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        prompts=expand(rules.build_prompts.output[0], context=TIERED_SWEEP_CONTEXT, allow_missing=True),
        dense=lambda w: (
            expand(rules.dense_baseline.output[0], context=TIERED_SWEEP_CONTEXT, workload=w.workload)
            if w.model == PRIMARY_MODEL
            else []
        ),
        ckpt=lambda w: model_checkpoint_files(MODELS[w.model]),
    output:
        [C.TIERED_FRONTIER.path(mode=m) for m in TIERED_MODES],
    wildcard_constraints:
        model="|".join(MODEL_NAMES),
        workload=PROMPT_FAMILY_NAMES,
    params:
        code=command_hash("tiered", "frontier"),
        cfg=lambda w: bcr_config.config_hash(
            {
                "frontier": [s.as_dict() for s, _, _ in tiered_frontier.grid(config)],
                "model": MODELS[w.model],
                **{k: config.get(k) for k in ("runtime", "generation")},
            }
        ),
        context=TIERED_SWEEP_CONTEXT,
        modes=" ".join(TIERED_MODES),
        dense=lambda w, input: f"--dense {input.dense}" if input.dense else "",
    benchmark:
        benchmark_path("tiered_frontier", "{model}/{workload}")
    log:
        "logs/tiered_frontier/{model}/{workload}.log",
    threads: THREADS  # exactness only: nothing timed
    resources:
        runtime=120,
        mem_mb=32000,
    shell:
        "bcr tiered frontier --config {input.cfg} --model {wildcards.model} --context {params.context} "
        "--prompts {input.prompts} {params.dense} --query-modes {params.modes} --out {output} --quiet "
        "> {log} 2>&1"
