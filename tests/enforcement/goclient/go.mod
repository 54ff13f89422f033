module oshu.dev/enforcement/goclient

go 1.22
