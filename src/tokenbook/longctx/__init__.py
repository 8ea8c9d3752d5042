"""Long-context inference methods (Part A of the book)."""
