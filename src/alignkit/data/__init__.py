"""Data layer: readers for JSONL / Parquet / CSV / saved HF datasets, record validation with
file:line:field errors, chat rendering, tokenisation and padding-free packing."""
