"""serdemo: a speech emotion recognition workbench.

Data flow: ``audio`` (decode, validate, 16 kHz mono) -> ``features`` (log-mel, optional ``vtlp``)
-> ``models`` (encoder, masked attention pooling, heads) -> ``inference`` (Predictor).
"""

__version__ = "0.1.0"
