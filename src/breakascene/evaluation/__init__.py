"""The evaluation suite of the paper's Sec. 4.1 / App. B.2 (Fig. 5): COCO scenes -> training -> scores -> plot.

    coco.py        build-scenes: COCO images + instance masks -> square scene folders that ``extract`` reads
    prompts.py     the paper's 10 templates x every non-empty subset of a scene's handles
    collection.py  the masked baselines' small image collection (Fig. 6), a pure function
    run.py         eval run: the method table, work items, sharding (accelerate) and resume
    metrics.py     prompt similarity (CLIP), identity similarity (DINO + panoptic masks), bootstrap CIs
    report.py      CSV, markdown table and the Fig. 5 scatter plot with its Pareto front
    cli.py         the ``break-a-scene eval`` sub-commands

Nothing heavy is imported here: pycocotools, matplotlib and the metric models load inside functions.
"""
