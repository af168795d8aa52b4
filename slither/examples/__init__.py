"""The five runnable examples (importable by workers). Run them with ``slither example``."""

EXAMPLES = ("text_analysis", "batch_stats", "data_etl", "ml_scoring", "image_pipeline")

DESCRIPTIONS = {
    "text_analysis": "12,500 documents: stopword Store, pool analysis, sentiment router, per-worker totals",
    "batch_stats": "6,500 datasets with 50 poison: three batching strategies, streaming, exact merge, a segfault",
    "data_etl": "24,000 rows with ledgers validated against a hot-reloaded schema Store, one version per row",
    "ml_scoring": "two sessions train and score scikit-learn models concurrently, isolated by affinity",
    "image_pipeline": "200 generated images thumbnailed with Pillow, weighted by pixels, bounded memory",
}
