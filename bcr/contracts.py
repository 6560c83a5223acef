"""The result contracts and the names every track writes against, defined once.

A result file is named here by its path pattern under ``results/`` and the columns its readers rely
on; the rules build their outputs from :meth:`ResultFile.path`, the writers build their frames from
the column lists, and the ledger reads by the same patterns and columns, so none of them imports
another track to learn a name.  Pure data: importing this module loads nothing but the standard
library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RESULTS_ROOT = "results"

# --- shared names ---------------------------------------------------------------------------------

# How the question reaches the cache: read with the context before compression (``question_aware``,
# the study's protocol) or fed through the already compressed cache (``question_agnostic``, kvpress's
# protocol and what a cache shared by many questions needs).
QUERY_MODES = ("question_aware", "question_agnostic")
QUERY_MODE = "query_mode"
WORKLOAD = "workload"  # the prompt family (or serving workload) a row belongs to
# Prompt families: one needle (key and value together); its value tokens scattered over the context
# (the answer needs several far-apart pages); several needles, one queried (text renderer: keeping the
# wrong page gives a plausible wrong answer).
PROMPT_WORKLOADS = ("needle", "scattered", "distractor")
EXACT = "exact"  # greedy tokens identical to the dense reference over the whole compared trajectory
EXACT_ANSWER = "exact_answer"  # identical over the answer span only (the note's claim)

# Serving arms: our cache, SGLang's Python RadixCache, and UnifiedRadixCache on each of its cores.
ARMS = ("bcr", "radix", "unified_python", "unified_rust")
OUR_ARM = ARMS[0]  # the arm every serving summary compares against each of the others
# Decode paths: the stock transformers cache (the reference) and the tiered ones (bcr.tiered.paths).
DENSE_PATH = "dense"
DENSE_STATIC_PATH = "dense_static"  # transformers' preallocated StaticCache, timed beside DENSE_PATH
DECODE_PATHS = ("densify", "paged")

PROVENANCE_COLUMNS = [
    "run_id",
    "config_hash",
    "git_commit",
    "model",
    "device",
    "torch",
    "transformers",
    "sglang",
]

# --- column contracts ----------------------------------------------------------------------------

PROMPT_COLUMNS = [
    "prompt_id",
    "context",
    "input_ids",
    "answer_ids",
    "answer_text",
    "needle_start",
    "needle_end",
    "question_start",  # index of the question's first token: context before it, question from it
    "depth",
    "renderer",
    WORKLOAD,
    "value_positions",  # where each answer token sits in the prompt (diagnostics; no compressor reads it)
]
ACCURACY_COLUMNS = [WORKLOAD, "context", "n", "accuracy", "metric"]
DENSE_COLUMNS = [
    "prompt_id",
    WORKLOAD,
    "context",
    "prompt_tokens",
    "output_ids",
    "n_generated",
    "answer_correct",
    "ttft_s",
    "tpot_s",
    "kv_bytes",
    "peak_mem_bytes",
    "peak_prefill_bytes",
    "peak_decode_bytes",
    "repeats",
]
# What names a tiered row: one per (setting, family, query mode, context, prompt, decode path).
TIERED_KEYS = ["setting", WORKLOAD, QUERY_MODE, "context", "prompt_id", "decode_path"]
# One row per TIERED_KEYS, written by the tiered harness.
TIERED_COLUMNS = [
    *TIERED_KEYS,
    EXACT,
    EXACT_ANSWER,
    "first_divergence",
    "divergence_margin",  # the reference's top-1 minus top-2 logit where the trajectories part
    "degenerate",  # the reference's continuation after its answer is one token repeated
    "max_logit_diff",
    "answer_correct",
    "logical_tokens",
    "stored_tokens",
    "compression",
    "stored_fraction",
    "ttft_s",
    "tpot_s",
    "ttft_ratio",
    "tpot_ratio",
    "ttft_ratio_static",  # the same medians against the StaticCache arm's
    "tpot_ratio_static",
    "kv_bytes_stored",
    "kv_bytes_peak",
    "kv_bytes_peak_decode",  # the decode-phase high-water mark (kv_bytes_peak includes the prefill's)
    "peak_mem_bytes",
]
# Both summary tables start with a setting's exactness and compression at one context.
_SUMMARY_COLUMNS = [
    "setting",
    WORKLOAD,
    QUERY_MODE,
    "context",
    "decode_path",
    "n_prompts",
    "n_exact",  # exact over the answer span (the primary measure)
    "exact",
    "exactness",
    "n_exact_trajectory",  # exact over the whole compared trajectory (the stronger test)
    "n_degenerate",
    "compression",
    "stored_fraction",
]
SWEEP_SUMMARY_COLUMNS = [*_SUMMARY_COLUMNS, "control", "promoted", "first_failure"]
PROMOTION_SUMMARY_COLUMNS = [
    *_SUMMARY_COLUMNS,
    "ttft_ratio",
    "tpot_ratio",
    "dense_peak_mem_bytes",
    "tiered_peak_mem_bytes",
    "delta_vram_pct",
    "dense_kv_bytes_peak",
    "tiered_kv_bytes_peak",
    "delta_kv_peak_pct",
    "first_failure",
]
CACHE_OPS_COLUMNS = [
    "arm",
    WORKLOAD,
    "page_size",
    "op",
    "n",
    "us_p50",
    "us_p50_lo",  # the p50's order-statistic bounds (bcr.prefix.bench.median_interval)
    "us_p50_hi",
    "us_p99",
    "us_mean",
    "tokens",
    "cached_tokens",
    "requests",
    "replays",
    "clock",
]
# Files later tracks write (the ledger already reads them when present).
# One row per served request (bcr.serving.runs); the first nine are what every reader may rely on.
SERVING_COLUMNS = [
    WORKLOAD, "arm", "request_id", "prompt_tokens", "cached_tokens", "ttft_s", "e2e_s", "output_tokens", "error",
]  # fmt: skip
SERVING_REQUEST_COLUMNS = [*SERVING_COLUMNS, "engine", "force_miss", "order", "output_ids", "output_logprobs"]
# The Result-1 table (bcr.serving.summary): arm against each baseline, paired by request.
SERVING_SUMMARY_COLUMNS = [
    "engine", WORKLOAD, "reuse", "arm", "baseline", "n", "errors_arm", "errors_baseline",
    "cached_tokens_arm", "cached_tokens_baseline", "cached_delta", "outputs_equal",
    "ttft_p50_ratio", "ttft_p50_low", "ttft_p50_high", "ttft_p99_ratio", "ttft_p99_low", "ttft_p99_high",
    "e2e_p50_ratio", "e2e_p50_low", "e2e_p50_high", "ttft_p50_arm_ms", "ttft_p50_baseline_ms",
]  # fmt: skip
# Long-context correctness per prompt (bcr.serving.correctness); ``exact`` (token ids and their
# log-probabilities bit-identical) is what the ledger reads.
LONGCTX_COLUMNS = [
    "engine", "prompt_id", "arm", "baseline", "asks", "prompt_tokens", EXACT, "tokens_exact", "logprobs_exact",
    "first_divergent_ask", "first_divergence", "cached_tokens_arm", "cached_tokens_baseline", "reused_equals_cold_arm",
    "reused_equals_cold_baseline", "errors",
]  # fmt: skip
# The latency decomposition's phases, in the order a generation passes through them (bcr.phases
# times them; the site stacks them in this order).
DECOMPOSITION_PHASES = (
    "prefill_forward",
    "scoring",  # observation logits, page importance, the exact-page selection
    "phantoms",  # k-means summaries of the candidate pages
    "surprise",  # the summaries' error and the surprise-page choice
    "packing",  # gathering exact tokens and summaries into the decode path's storage
    "decode_attention",
    "view_rebuild",  # densify's per-step torch.cat of its pages (and the bias row)
    "decode_other",  # the rest of each decode step: embeddings, MLPs, norms, the next token
)
# The latency decomposition: per instrumented run (a timed prompt, an arm) and phase (bcr.phases),
# exclusive seconds; ``total_s`` is the instrumented run's wall time (the phases sum to it) and
# ``reference_s`` the same arm's uninstrumented TTFT + decode time on that prompt.  Dense arms
# (DENSE_PATH, DENSE_STATIC_PATH) carry their path name as ``setting``.
DECOMPOSITION_COLUMNS = [
    *TIERED_KEYS,
    "phase",
    "seconds",
    "total_s",
    "reference_s",
    "steps",
]
# kvpress's presses on our prompts (bcr.peers): one row per (press, matched point, query mode,
# prompt); ``compression_ratio`` is kvpress's (the fraction removed) = 1 - the matched setting's
# stored fraction at the sweep context; ``kv_bytes_stored`` the bytes the press's cache really holds;
# ``exact`` / ``exact_answer`` against a dense run of the same mode in the peer environment;
# ``error`` names the step that failed (then nothing is measured).
PEERS_RUN_COLUMNS = [
    "press", "compression_ratio", "setting_matched", "target_stored_fraction", QUERY_MODE, WORKLOAD, "context",
    "prompt_id", "stored_fraction", EXACT, EXACT_ANSWER, "first_divergence", "answer_correct",
    "dense_answer_correct", "ttft_s", "tpot_s", "kv_bytes_stored", "kv_bytes_dense", "hook_equal", "pipeline_equal",
    "dense_equal_main", "output_ids", "dense_ids", "error",
    # a press that masks (AdaKV, KVzip) keeps what it masks stored: stored_fraction is what the cache
    # holds, effective_stored_fraction what attention reads; a timed job's clocks as ratios to a dense
    # run timed before and after the presses in the same process
    "masks", "effective_stored_fraction", "dense_ttft_s", "dense_tpot_s", "ttft_ratio", "tpot_ratio",
]  # fmt: skip
OURS_PRESS = "tiered"  # the ``press`` value of our own rows in the comparison
# The comparison: every press's rows and ours (``press`` = OURS_PRESS: the matched setting's tiered rows).
PEERS_COLUMNS = [
    "press", "compression_ratio", "setting_matched", "target_stored_fraction", QUERY_MODE, WORKLOAD, "context",
    "prompt_id", "stored_fraction", EXACT, EXACT_ANSWER, "first_divergence", "answer_correct", "ttft_s", "tpot_s",
    "kv_bytes_stored", "hook_equal", "pipeline_equal", "dense_equal_main", "error",
    "masks", "effective_stored_fraction", "ttft_ratio", "tpot_ratio",
]  # fmt: skip
# Negative controls: tiered rows plus which control and the setting it is matched to (null: the
# matched setting itself, measured from the same shared prefill).
CONTROL_COLUMNS = [*TIERED_COLUMNS, "control", "matched_to"]
# The exactness frontier: tiered rows of one model plus the grid point's knob and value (knob
# ``base``: the base setting itself) and whether the dense reference answered the prompt right (an
# exact compressor of a model that does not retrieve proves little).  ``model`` is the provenance
# column every row carries.
FRONTIER_COLUMNS = [*TIERED_COLUMNS, "model", "knob", "knob_value", "dense_answer_correct"]


@dataclass(frozen=True)
class ResultFile:
    """One result file (or a family of them): its pattern under ``results/`` and required columns."""

    pattern: str
    columns: tuple[str, ...] = ()
    what: str = ""
    rule: str | None = None  # the workflow rule that writes it; None: no rule does yet

    @property
    def wildcards(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\{(\w+)\}", self.pattern))

    def path(self, **values: object) -> str:
        """``results/<pattern>``; wildcards not given stay ``{name}`` (a Snakemake pattern)."""
        filled = re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), m.group(0))), self.pattern)
        return f"{RESULTS_ROOT}/{filled}"

    @property
    def glob(self) -> str:
        """The pattern relative to the results root with every wildcard as ``*``."""
        return re.sub(r"\{\w+\}", "*", self.pattern)


def _file(
    pattern: str, columns: list[str] | None = None, what: str = "", rule: str | None = None
) -> ResultFile:
    return ResultFile(pattern, tuple(columns or ()), what, rule)


RUN_CONFIG = _file("run/config.yaml", what="the effective config of the run (written at parse time)")
# What each job cost: Snakemake's `benchmark:` file per job, and all of them in one table.
BENCHMARK = _file("run/benchmarks/{rule}/{job}.tsv", what="Snakemake's benchmark of one job")
BENCHMARK_COLUMNS = ["rule", "job", "s", "max_rss", "cpu_time", "mean_load", "io_in", "io_out"]
BENCHMARKS = _file(
    "run/benchmarks.parquet",
    [*BENCHMARK_COLUMNS],
    "every job's benchmark (wall s, max RSS MB, CPU s) of the run, gathered by the ledger step",
    "evaluate_claims",
)
# The jobs a --keep-going run lost (scripts/run.sh, `bcr site failures`): rule, outputs, log tail.
FAILED_JOBS = _file(
    "run/failed_jobs.json", what="the failed jobs of the last `make run`, with their log tails"
)
# The software environments a run used, each as `pip freeze` prints it, with the lock it was built from.
ENVIRONMENTS = {"main": "requirements/lock/main.txt", "peers": "requirements/lock/peers.txt"}
RUN_FREEZE = _file(
    "run/freeze/{environment}.txt",
    what="`pip freeze` of one environment the run used (main: .venv, peers: .venv-peers)",
    rule="freeze_environments",
)
MODEL_CARD = _file(
    "model/{model}/card.json", what="model card: parameters, checksum, training report", rule="model_card"
)
MODEL_ACCURACY = _file(
    "model/{model}/accuracy.parquet", ACCURACY_COLUMNS, "task accuracy per family and context", "model_card"
)
PROMPTS = _file(
    "prompts/{workload}/{context}.parquet",
    PROMPT_COLUMNS,
    "the deterministic prompt set of a family and context",
    "build_prompts",
)
DENSE = _file(
    "dense/{workload}/{context}.parquet",
    DENSE_COLUMNS,
    "dense baseline, one row per prompt",
    "dense_baseline",
)
# The tiered files of one prompt family and query mode live under their names: each is swept,
# promoted and controlled on its own (one shared prefill per prompt serves both modes in the sweep).
TIERED_SWEEP = _file(
    "tiered/{workload}/sweep/{mode}.parquet",
    TIERED_COLUMNS,
    "every sweep setting at the sweep context",
    "tiered_sweep",
)
TIERED_PROMOTED = _file(
    "tiered/{workload}/promoted/{mode}.json",
    what="the sweep checkpoint's decision for one mode",
    rule="tiered_promote",
)
TIERED_SWEEP_SUMMARY = _file(
    "tiered/{workload}/sweep_summary/{mode}.parquet",
    SWEEP_SUMMARY_COLUMNS,
    "the note's table 1",
    "tiered_promote",
)
TIERED_PROMOTION = _file(
    "tiered/{workload}/promotion/{mode}/{context}.parquet",
    TIERED_COLUMNS,
    "the promoted settings at a larger context",
    "tiered_promotion",
)
TIERED_PROMOTION_EXACT = _file(
    "tiered/{workload}/promotion_exact/{mode}/{context}.parquet",
    TIERED_COLUMNS,
    "a timed promotion job's exactness rows, measured untimed beside other jobs (its input)",
    "tiered_promotion_exact",
)
TIERED_PROMOTION_SUMMARY = _file(
    "tiered/{workload}/promotion_summary/{mode}.parquet",
    PROMOTION_SUMMARY_COLUMNS,
    "the note's table 2",
    "tiered_promotion_summary",
)
TIERED_CONTROLS = _file(
    "tiered/{workload}/controls/{mode}/{context}.parquet",
    CONTROL_COLUMNS,
    "negative controls matched to the promoted settings",
    "tiered_controls",
)
TIERED_FRONTIER = _file(
    "tiered/frontier/{model}/{workload}/{mode}.parquet",
    FRONTIER_COLUMNS,
    "the exactness frontier: a grid of knob values at the sweep context, per model",
    "tiered_frontier",
)
TIERED_PROMOTION_DECOMPOSITION = _file(
    "tiered/{workload}/decomposition/{mode}/{context}.parquet",
    DECOMPOSITION_COLUMNS,
    "latency phases of one promotion run's instrumented prompts (empty when it is untimed)",
    "tiered_promotion",
)
TIERED_DECOMPOSITION = _file(
    "tiered/decomposition.parquet",
    DECOMPOSITION_COLUMNS,
    "latency phases of every promoted setting, context and decode path, beside dense",
    "tiered_decomposition",
)
CACHE_OPS = _file(
    "serving/cache_ops.parquet", CACHE_OPS_COLUMNS, "µs per cache operation and arm", "cache_ops"
)
SERVING_REQUESTS = _file(
    "serving/{engine}/{workload}/{arm}.parquet", SERVING_COLUMNS, "one row per served request", "serving_run"
)
# Outside SERVING_REQUESTS's glob (one level deeper), so no reader takes a 0%-reuse run for an arm.
SERVING_FORCE_MISS = _file(
    "serving/{engine}/force_miss/{workload}/{arm}.parquet",
    SERVING_COLUMNS,
    "one row per request served with SGLANG_RADIX_FORCE_MISS=1 (0% reuse: the cache's own overhead)",
    "serving_force_miss",
)
SERVING_SUMMARY = _file(
    "serving/summary.parquet",
    SERVING_SUMMARY_COLUMNS,
    "per workload: cached-token delta and TTFT/E2E ratios against each baseline arm",
    "serving_summary",
)
LONGCTX_REQUESTS = _file(
    "correctness/{engine}/requests/{arm}.parquet",
    SERVING_COLUMNS,
    "the longctx workload's requests per arm, output token ids included",
    "longctx_correctness",
)
LONGCTX = _file(
    "correctness/longctx.parquet",
    LONGCTX_COLUMNS,
    "bcr vs radix outputs near max context",
    "longctx_correctness",
)
PEERS_RUNS = _file(
    "peers/runs/{workload}.parquet",
    PEERS_RUN_COLUMNS,
    "kvpress's presses on one family's prompts, both modes, at the matched stored fractions",
    "peers_run",
)
PEERS = _file(
    "peers/kvpress.parquet",
    PEERS_COLUMNS,
    "every press's rows beside ours at the same stored fraction",
    "peers_compare",
)
LEDGER = _file("ledger.parquet", what="one computed verdict per claim", rule="evaluate_claims")
SITE_INDEX = _file("site/index.html", what="the built site", rule="build_site")

RESULT_FILES: dict[str, ResultFile] = {
    name.lower(): f for name, f in dict(globals()).items() if isinstance(f, ResultFile) and name.isupper()
}
