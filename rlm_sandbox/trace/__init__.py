"""The run's trace: the event vocabulary, the writer, the tree model built from events, and the
views of it (terminal, live tree, HTML)."""
