from scaling.cli import entry

entry()
