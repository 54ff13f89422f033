import { Template, defaultBuildLogger } from "e2b";
import { template } from "./e2b-template.js";

const buildInfo = await Template.build(template, {
  alias: "oshu-vault-claude",
  cpuCount: 2,
  memoryMB: 2048,
  onBuildLogs: defaultBuildLogger(),
});
console.log(`Template ready: ${buildInfo.alias}`);
