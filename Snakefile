# The model-zoo DAG: fetch weights named by URL, prepare datasets -> MLflow store -> pretrain
# bodies -> train (RPN -> dump proposals -> train on proposals) -> evaluate -> MODEL_ZOO.md.
#
#   snakemake --cores all --profile workflow/profiles/default            # the shapes zoo
#   snakemake baseline_e2e_faster_rcnn_R-18-FPN_1x                        # one baseline
#   snakemake -n --profile workflow/profiles/slurm reproduce_model_zoo \
#       --configfile configs/zoo/coco_2017.yaml                           # the COCO zoo
#
# The manifest is configs/zoo/shapes.yaml unless --configfile names another (a manifest given
# on the command line replaces this default rather than merging into it).

if not config:

    configfile: "configs/zoo/shapes.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/proposals.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/zoo.smk"


wildcard_constraints:
    baseline=alternatives(ZOO.baselines),
    rpn=alternatives(RPN_WITH_CONSUMERS),
    dataset=alternatives(ZOO.all_datasets()),
    pretrained=alternatives(ZOO.pretrained),
    download=alternatives(DOWNLOADS),


localrules:
    reproduce_model_zoo,
    zoo_table,
    mlflow_init,
    model_zoo_table,
    fetch_weights,


rule reproduce_model_zoo:
    default_target: True
    input:
        ZOO.table,


rule zoo_table:
    input:
        ZOO.table,


for _baseline in ZOO.baselines:

    rule:
        name:
            f"baseline_{_baseline}"
        localrule: True
        input:
            zoo_outputs(_baseline),
