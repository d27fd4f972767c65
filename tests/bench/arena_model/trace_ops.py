# The two models' trace reader (valet-replay generate's format: `a ID BYTES`, `f ID`, `s`,
# `p BYTES`; `#` starts a comment): each operation as its letter and its integer fields.
def read_ops(path):
    for line in open(path):
        if not line or line[0] == '#': continue
        p = line.split()
        if p: yield p[0], [int(x) for x in p[1:]]
