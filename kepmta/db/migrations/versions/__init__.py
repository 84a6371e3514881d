"""One module per schema revision, each naming the one before it (`down_revision`)."""
