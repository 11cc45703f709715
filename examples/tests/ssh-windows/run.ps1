# Runs on the remote Windows host from the uploaded bundle's folder
# (Set-Location to it, then powershell -File run.ps1).
$ErrorActionPreference = "Stop"
Write-Output "running on $env:COMPUTERNAME as $env:USERNAME"
New-Item -ItemType Directory -Force -Path artifacts | Out-Null
Get-ComputerInfo | Out-File -FilePath artifacts/computerinfo.txt
Write-Output "ok"
exit 0
