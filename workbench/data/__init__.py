"""Q&A data: load any source, map columns onto instruction records, clean, split, check leakage, browse."""
