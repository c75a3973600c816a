from stepdrop_search.cli import main

main()
