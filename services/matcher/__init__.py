"""The matcher service: proposes Tandem-Städte and collegial-advice partners."""
