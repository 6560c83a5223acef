# bcr-memory: one DAG from the model to the published site.  Rules live per stage in
# workflow/rules/; the config is validated (schema + cross-field checks) before any job runs.
from snakemake.utils import min_version

min_version("9.0")


# The embedded CPU default, unless the command line names config files: then those alone are the
# config (the study's config/a100.yaml stands alone; no key of the default leaks into it).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/dense.smk"
include: "workflow/rules/tiered.smk"
include: "workflow/rules/serving.smk"
include: "workflow/rules/peers.smk"
include: "workflow/rules/site.smk"


localrules:
    all,


rule all:
    default_target: True
    input:
        rules.build_site.output,
        SITE_RESULTS,
