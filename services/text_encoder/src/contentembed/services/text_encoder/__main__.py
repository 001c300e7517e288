import sys

from contentembed.services.text_encoder.service import main

sys.exit(main(sys.argv[1:]))
