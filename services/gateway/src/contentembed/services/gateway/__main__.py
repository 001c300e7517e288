import sys

from contentembed.services.gateway.service import main

sys.exit(main(sys.argv[1:]))
