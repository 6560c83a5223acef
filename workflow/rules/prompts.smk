# Prompt sets: deterministic per context length (seeded by (seed, context)).


rule build_prompts:
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
    output:
        C.PROMPTS.path(),
    wildcard_constraints:
        context=r"\d+",
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
    log:
        "logs/build_prompts/{context}.log",
    shell:
        "bcr prompts build --config {input.cfg} --context {wildcards.context} --out {output} > {log} 2>&1"
