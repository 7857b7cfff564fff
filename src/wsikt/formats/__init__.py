"""File formats: each format has one writer and one reader here."""
