"""How tables write the two values of a boolean: the words every reader of a boolean shares.

A schema's boolean column names its own spellings (`true: "Y"`, `false: "N"`;
common/schema.py:BooleanColumn) and the loader accepts exactly those. These words are for where
no spelling is known:

* `BOOLEAN_PAIRS`, the common spellings, lower-cased, each with its partner: the schema draft
  recognises a boolean column by them and infers an unseen value's spelling from the one it saw
  ("Y" -> "N"); the evaluation reads a synthetic table's booleans in any of them (any case),
  since another generator's output has no spelling the schema knows.
* `UNSPELLED_TRUE` / `UNSPELLED_FALSE` (true/false, yes/no, 1/0, any case): what a column of an
  older schema without spellings accepts. Not t/f or y/n: such schemas never accepted them, and a
  table they refused stays refused. A run config's yes/no setting is read with the same words.
"""

from __future__ import annotations

BOOLEAN_PAIRS = {"true": "false", "yes": "no", "1": "0", "t": "f", "y": "n"}
TRUE_WORDS = frozenset(BOOLEAN_PAIRS)
FALSE_WORDS = frozenset(BOOLEAN_PAIRS.values())

UNSPELLED_TRUE = ("true", "yes", "1")
UNSPELLED_FALSE = tuple(BOOLEAN_PAIRS[w] for w in UNSPELLED_TRUE)
