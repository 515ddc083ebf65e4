"""Reading run folders and their TensorBoard events, tables and figures: shared by callbacks and tools."""
