"""hookscope collector: JetStream into DuckDB and a Parquet archive."""
