"""One module per pipeline stage; each becomes one asset group in the lineage graph."""
