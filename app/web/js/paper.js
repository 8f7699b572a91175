// Aytar & Gunduc, Table 3 (patch-level 70:30 splits; no AUC in the table). The same numbers as
// models/protocol.py PAPER_TABLE3 (tests/test_web_page.py checks that they agree).
export const PAPER_TABLE3 = {
  "TRTR": {"accuracy": 0.84, "precision": 0.84, "recall": 0.84, "f1": 0.84},
  "TSTS": {"accuracy": 0.99, "precision": 0.98, "recall": 0.98, "f1": 0.98},
  "TRTS": {"accuracy": 0.81, "precision": 0.82, "recall": 0.78, "f1": 0.78},
  "TSTR": {"accuracy": 0.76, "precision": 0.77, "recall": 0.76, "f1": 0.76}
};

export const ROW_TITLES = {
  TRTR: "train real, test real",
  TSTS: "train synthetic, test synthetic",
  TRTS: "train real, test synthetic",
  TSTR: "train synthetic, test real",
  AUG_REAL: "a small real share, test real",
  AUG_MIX: "the same plus all synthetic, test real",
};
