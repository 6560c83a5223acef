# Tiered compression (DESIGN.md, "Tiered compression"): the sweep at the first context is a
# checkpoint whose promoted.json decides which settings run at the promotion contexts; the list comes
# from the checkpoint's output (or the config's validated override), never from a hand-written list.
import re

from bcr.tiered import settings as tiered_settings
from bcr.tiered import workflow as tiered_workflow

TIERED_SWEEP_CONTEXT = tiered_settings.sweep_context(config)
TIERED_PROMOTION_CONTEXTS = tiered_settings.promotion_contexts(config)
TIERED_SWEEP = tiered_settings.sweep_settings(config)
TIERED_SETTING_NAMES = "|".join(re.escape(s) for s in sorted(config["tiered"]["settings"]))
# Negative controls run where the sweep decides and where the headline claims are made.
TIERED_CONTROL_CONTEXTS = (
    sorted({TIERED_SWEEP_CONTEXT, max(CONTEXTS)}) if config["tiered"].get("negative_controls") else []
)


rule tiered_sweep:
    """One setting on every sweep-context prompt: dense and tiered interleaved in one process."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        prompts=expand(rules.build_prompts.output[0], context=TIERED_SWEEP_CONTEXT),
        dense=expand(rules.dense_baseline.output[0], context=TIERED_SWEEP_CONTEXT),
        ckpt=model_checkpoint_files(),
    output:
        C.TIERED_SWEEP.path(),
    wildcard_constraints:
        setting=TIERED_SETTING_NAMES,
    params:
        code=command_hash("tiered", "run"),
        cfg=lambda w: tiered_workflow.run_hash(config, w.setting),
        context=TIERED_SWEEP_CONTEXT,
    log:
        "logs/tiered_sweep/{setting}.log",
    threads: TIMED_THREADS
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
        sweep=expand(rules.tiered_sweep.output[0], setting=TIERED_SWEEP),
    output:
        promoted=C.TIERED_PROMOTED.path(),
        summary=C.TIERED_SWEEP_SUMMARY.path(),
    params:
        code=command_hash("tiered", "promote"),
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
        prompts=rules.build_prompts.output[0],
        dense=rules.dense_baseline.output[0],
        ckpt=model_checkpoint_files(),
    output:
        C.TIERED_PROMOTION.path(),
    wildcard_constraints:
        context=r"\d+",
        setting=TIERED_SETTING_NAMES,
    params:
        code=command_hash("tiered", "run"),
        cfg=lambda w: tiered_workflow.run_hash(config, w.setting),
    log:
        "logs/tiered_promotion/{context}/{setting}.log",
    threads: TIMED_THREADS
    resources:
        runtime=180,
        mem_mb=48000,
    shell:
        "bcr tiered run --config {input.cfg} --setting {wildcards.setting} --context {wildcards.context} "
        "--prompts {input.prompts} --dense {input.dense} --out {output} --quiet > {log} 2>&1"


rule tiered_controls:
    """Negative controls matched to every promoted setting, from one shared prefill per prompt."""
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
    params:
        code=command_hash("tiered", "controls"),
        cfg=section_hash("tiered", "runtime", "model", "generation"),
    log:
        "logs/tiered_controls/{context}.log",
    threads: TIMED_THREADS
    resources:
        runtime=120,
        mem_mb=48000,
    shell:
        "bcr tiered controls --config {input.cfg} --context {wildcards.context} --prompts {input.prompts} "
        "--dense {input.dense} --promoted {input.promoted} --out {output} --quiet > {log} 2>&1"


rule tiered_promotion_summary:
    """The note's promotion table over whatever the checkpoint promoted (empty when nothing was)."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        promoted=rules.tiered_promote.output.promoted,
        # Evaluated only after the checkpoint has run: its promoted.json names the settings.
        runs=lambda w: tiered_workflow.promotion_files(
            checkpoints.tiered_promote.get().output.promoted, TIERED_PROMOTION_CONTEXTS
        ),
    output:
        C.TIERED_PROMOTION_SUMMARY.path(),
    params:
        code=command_hash("tiered", "summarize"),
    log:
        "logs/tiered_promotion_summary.log",
    resources:
        runtime=10,
        mem_mb=4000,
    shell:
        "bcr tiered summarize --config {input.cfg} --inputs {input.runs} --out {output} > {log} 2>&1"
