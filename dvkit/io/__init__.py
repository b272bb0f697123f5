"""File formats dvkit reads and writes."""
