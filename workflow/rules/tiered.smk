# Tiered compression (DESIGN.md §2): the sweep at the first context is a checkpoint whose promoted.json
# decides which settings run at the promotion contexts; the list comes from the checkpoint's output
# (or the config's validated override), never from a hand-written list in this file.
import re

from bcr.tiered import settings as tiered_settings
from bcr.tiered import workflow as tiered_workflow

TIERED_SWEEP_CONTEXT = tiered_settings.sweep_context(config)
TIERED_PROMOTION_CONTEXTS = tiered_settings.promotion_contexts(config)
TIERED_SWEEP = tiered_settings.sweep_settings(config)
TIERED_SETTING_NAMES = "|".join(re.escape(s) for s in sorted(config["tiered"]["settings"]))
TIERED_PROMOTED = "results/tiered/promoted.json"
TIERED_SWEEP_SUMMARY = "results/tiered/sweep_summary.parquet"
TIERED_PROMOTION_SUMMARY = "results/tiered/promotion_summary.parquet"
TIERED_CODE = code_hash(
    "tiered", "dense.py", "generation.py", "models.py", "prompts.py", "runtime.py", "provenance.py"
)


rule tiered_sweep:
    """One setting on every sweep-context prompt: dense and tiered interleaved in one process."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        prompts=f"results/prompts/{TIERED_SWEEP_CONTEXT}.parquet",
        dense=f"results/dense/{TIERED_SWEEP_CONTEXT}.parquet",
        ckpt=model_checkpoint_files(),
    output:
        "results/tiered/sweep/{setting}.parquet",
    wildcard_constraints:
        setting=TIERED_SETTING_NAMES,
    params:
        code=TIERED_CODE,
        cfg=lambda w: tiered_workflow.run_hash(config, w.setting),
        context=TIERED_SWEEP_CONTEXT,
    log:
        "logs/tiered_sweep/{setting}.log",
    # All the runtime's threads: timed runs never share the cores with another job.
    threads: config["runtime"]["threads"]
    resources:
        runtime=90,
        mem_mb=32000,
    shell:
        "bcr tiered run --config {input.cfg} --setting {wildcards.setting} --context {params.context} "
        "--prompts {input.prompts} --dense {input.dense} --out {output} --quiet > {log} 2>&1"


checkpoint tiered_promote:
    """Settings exact on every sweep prompt (controls checked, not promoted) -> promoted.json."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        sweep=expand("results/tiered/sweep/{setting}.parquet", setting=TIERED_SWEEP),
    output:
        promoted=TIERED_PROMOTED,
        summary=TIERED_SWEEP_SUMMARY,
    params:
        code=code_hash("tiered"),
        cfg=section_hash("tiered", "prompts"),
    log:
        "logs/tiered_promote.log",
    resources:
        runtime=10,
        mem_mb=4000,
    shell:
        "bcr tiered promote --config {input.cfg} --sweep {input.sweep} --out {output.promoted} "
        "--summary {output.summary} > {log} 2>&1"


rule tiered_promotion:
    """A promoted setting at a promotion context (same command and columns as the sweep)."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        prompts="results/prompts/{context}.parquet",
        dense="results/dense/{context}.parquet",
        ckpt=model_checkpoint_files(),
    output:
        "results/tiered/promotion/{context}/{setting}.parquet",
    wildcard_constraints:
        context=r"\d+",
        setting=TIERED_SETTING_NAMES,
    params:
        code=TIERED_CODE,
        cfg=lambda w: tiered_workflow.run_hash(config, w.setting),
    log:
        "logs/tiered_promotion/{context}/{setting}.log",
    threads: config["runtime"]["threads"]
    resources:
        runtime=180,
        mem_mb=48000,
    shell:
        "bcr tiered run --config {input.cfg} --setting {wildcards.setting} --context {wildcards.context} "
        "--prompts {input.prompts} --dense {input.dense} --out {output} --quiet > {log} 2>&1"


rule tiered_promotion_summary:
    """The note's promotion table over whatever the checkpoint promoted (empty when nothing was)."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        promoted=TIERED_PROMOTED,
        # Evaluated only after the checkpoint has run: its promoted.json names the settings.
        runs=lambda w: tiered_workflow.promotion_files(
            checkpoints.tiered_promote.get().output.promoted, TIERED_PROMOTION_CONTEXTS
        ),
    output:
        TIERED_PROMOTION_SUMMARY,
    params:
        code=code_hash("tiered"),
    log:
        "logs/tiered_promotion_summary.log",
    resources:
        runtime=10,
        mem_mb=4000,
    shell:
        "bcr tiered summarize --config {input.cfg} --inputs {input.runs} --out {output} > {log} 2>&1"
