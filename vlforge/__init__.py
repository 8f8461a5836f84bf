"""vlforge: reproducible vision-language pretraining as one DAG."""
__version__ = "0.1.0"
