import sys

from contentembed.services.index.service import main

sys.exit(main(sys.argv[1:]))
