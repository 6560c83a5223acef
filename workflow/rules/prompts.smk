# Prompt sets: deterministic per family and context length (seeded by (seed, context[, family])).
PROMPT_FAMILIES = list(config["prompts"]["workloads"])
PRIMARY_FAMILY = PROMPT_FAMILIES[0]  # latency and memory are claimed on it
PROMPT_FAMILY_NAMES = "|".join(PROMPT_FAMILIES)


rule build_prompts:
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
    output:
        C.PROMPTS.path(),
    wildcard_constraints:
        context=r"\d+",
        workload=PROMPT_FAMILY_NAMES,
    params:
        code=command_hash("prompts", "build"),
        cfg=bcr_config.config_hash(
            {
                "prompts": config["prompts"],
                "vocab": config["model"].get("architecture", {}).get("vocab_size"),
                "tokenizer": config["model"].get("hub_id"),
                "max_new_tokens": config["generation"]["max_new_tokens"],
            }
        ),
    benchmark:
        benchmark_path("build_prompts", "{workload}/{context}")
    log:
        "logs/build_prompts/{workload}/{context}.log",
    shell:
        "bcr prompts build --config {input.cfg} --workload {wildcards.workload} --context {wildcards.context} "
        "--out {output} > {log} 2>&1"
