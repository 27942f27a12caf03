import os, sys
blk = os.urandom(100 << 10)
for i in range(1000):
    with open(os.path.join(sys.argv[1], "f%03d" % i), "wb") as f:
        f.write(blk)
