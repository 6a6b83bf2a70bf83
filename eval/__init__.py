"""Offline retrieval evaluation through the production path (``rag eval``, docs/evaluation.md).

datasets.py    BEIR-layout loader; malformed files raise errors naming the file and line
runner.py      ingest a corpus with the real pipeline (skipping unchanged documents), run queries
truncation.py  the embedder that cuts inputs at the model limit, for reference-equivalent runs
runtime.py     the embedding llama-servers a run starts (or the URLs it is given)
metrics.py     nDCG@10, recall@10/@100, MRR@10, MAP via ir-measures; latency percentiles
report.py      the JSON report and its Markdown summary
compare.py     runs side by side with regression flags
plot.py        PNG of the metrics across runs
golden/        the project's own small golden set over rag/samples/
"""
