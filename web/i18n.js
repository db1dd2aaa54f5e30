// The interface's words in English and Chinese; the browser's language by default, a switch
// in the top bar, the choice kept in the URL (#lang=zh) and in localStorage.

const WORDS = {
  en: {
    title: "City assets",
    search: "Search ids, names, streets…",
    layers: "Layers",
    legend: "Legend",
    basemap: "Terrain",
    hillshade: "Hillshade",
    relief: "Colour relief",
    features: "features",
    inspect: "Inspect",
    here: "features here — pick one",
    nothing: "Nothing here",
    json: "JSON",
    html: "Page",
    history: "History",
    readings: "Latest readings",
    versions: "versions",
    noReadings: "No readings recorded",
    tools: "Tools",
    measure: "Measure",
    near: "Near",
    intersects: "Intersects",
    buffer: "Buffer",
    dig: "Dig check",
    isolate: "Isolate",
    stats: "Statistics",
    table: "Table",
    hierarchy: "In the grid",
    asof: "As of",
    asofHint: "Show the twin as it was recorded at an earlier time.",
    now: "Now",
    point: "Point",
    line: "Line",
    polygon: "Polygon",
    distance: "Distance (m)",
    depth: "Dig depth (m)",
    finish: "Finish",
    clear: "Clear",
    run: "Run",
    csv: "Export CSV",
    close: "Close",
    drawHint: "Click the map to add points; Finish when done.",
    pickPipe: "Click a water or gas pipe to isolate it (a sewer: its upstream and downstream).",
    pickAsset: "Pick an asset on the map first (click it), then run.",
    valvesToClose: "Valves to close",
    pipesCut: "Pipes cut off",
    affected: "Affected assets",
    length: "Length",
    area: "Area",
    total: "Total",
    results: "Results",
    conflicts: "Conflicts",
    reaches: "Reached",
    clearance: "Clearance below",
    asset: "Asset",
    downstream: "Downstream",
    upstream: "Upstream",
    level: "Level",
    statistic: "Statistic",
    lampsOut: "Lamps out",
    oldPipes: "Pipes older than 30 years",
    openSites: "Construction sites",
    pipeLength: "Pipe length (m)",
    cells: "cells",
    live: "Live",
    offline: "Reconnecting",
    collapse: "Hide panel",
    language: "中文",
    levels: { district: "District", street: "Street", community: "Community", cell: "Cell" },
    collection: "Layer",
    id: "Id",
    value: "Value",
    time: "Time",
    property: "Property",
    keyTitle: "Sign in with an API key",
    keyPublic: "Public",
    keyInUse: "Signed in",
    keyLabel: "API key",
    keyHint: "Kept in this browser tab until it is closed, and sent only to this server.",
    keyApply: "Apply",
    keyForget: "Sign out",
    keyApplied: "Key applied: showing what it may see.",
    keyRejected: "Key not accepted: showing the public layers.",
    keyForgotten: "Signed out: showing the public layers.",
    keyEmpty: "Enter a key first.",
    keyFailed: "The server could not check the key; try again.",
  },
  zh: {
    title: "城市设施",
    search: "搜索编号、名称、街道…",
    layers: "图层",
    legend: "图例",
    basemap: "地形",
    hillshade: "山体阴影",
    relief: "分层设色",
    features: "个要素",
    inspect: "查看",
    here: "个要素重叠 — 请选择",
    nothing: "此处无要素",
    json: "JSON",
    html: "网页",
    history: "历史",
    readings: "最新读数",
    versions: "个版本",
    noReadings: "暂无读数",
    tools: "工具",
    measure: "测量",
    near: "周边",
    intersects: "相交",
    buffer: "缓冲区",
    dig: "开挖检查",
    isolate: "关阀分析",
    stats: "统计",
    table: "属性表",
    hierarchy: "网格层级",
    asof: "历史时刻",
    asofHint: "查看孪生在过去某一时刻记录的状态。",
    now: "当前",
    point: "点",
    line: "线",
    polygon: "面",
    distance: "距离（米）",
    depth: "开挖深度（米）",
    finish: "完成",
    clear: "清除",
    run: "执行",
    csv: "导出 CSV",
    close: "关闭",
    drawHint: "在地图上点击添加节点，完成后点“完成”。",
    pickPipe: "点击给水或燃气管线进行关阀分析（污水/雨水管线：上下游追踪）。",
    pickAsset: "请先在地图上点选一个设施，再执行。",
    valvesToClose: "需关闭阀门",
    pipesCut: "停水/停气管段",
    affected: "受影响设施",
    length: "长度",
    area: "面积",
    total: "合计",
    results: "结果",
    conflicts: "冲突",
    reaches: "是否挖到",
    clearance: "底部净距",
    asset: "设施",
    downstream: "下游",
    upstream: "上游",
    level: "层级",
    statistic: "统计项",
    lampsOut: "故障路灯",
    oldPipes: "超过30年的管线",
    openSites: "施工工地",
    pipeLength: "管线长度（米）",
    cells: "个网格",
    live: "实时",
    offline: "重新连接中",
    collapse: "收起面板",
    language: "English",
    levels: { district: "区", street: "街道", community: "社区", cell: "网格" },
    collection: "图层",
    id: "编号",
    value: "值",
    time: "时间",
    property: "属性",
    keyTitle: "使用 API 密钥登录",
    keyPublic: "公开",
    keyInUse: "已登录",
    keyLabel: "API 密钥",
    keyHint: "仅保存在当前浏览器标签页中，关闭即清除；只发送给本服务器。",
    keyApply: "应用",
    keyForget: "退出",
    keyApplied: "密钥已应用：显示其可见的内容。",
    keyRejected: "密钥未被接受：现显示公开图层。",
    keyForgotten: "已退出：现显示公开图层。",
    keyEmpty: "请先输入密钥。",
    keyFailed: "服务器无法验证密钥，请重试。",
  },
};

// Readable names of the built-in layers' fields (others are shown by their own names).
const FIELDS = {
  network: ["Network", "管网"], material: ["Material", "材质"], diameter_mm: ["Diameter", "管径"],
  install_year: ["Installed", "建设年份"], depth_m: ["Depth", "埋深"], pressure_zone: ["Pressure zone", "压力分区"],
  status: ["Status", "状态"], kind: ["Kind", "类型"], normally_open: ["Normally open", "常开"],
  operable: ["Operable", "可操作"], name: ["Name", "名称"], class: ["Class", "等级"], lanes: ["Lanes", "车道数"],
  surface: ["Surface", "路面"], oneway: ["One-way", "单行"], bridge: ["Bridge", "桥梁"], tunnel: ["Tunnel", "隧道"],
  maxspeed_kmh: ["Speed limit", "限速"], length_m: ["Length", "长度"], spans: ["Spans", "跨数"],
  condition: ["Condition (1 good – 5 poor)", "技术状况（1好–5差）"], last_inspection: ["Last inspection", "最近检查"],
  lamp_type: ["Lamp", "灯具"], wattage_w: ["Power", "功率"], height_m: ["Height", "杆高"], circuit: ["Circuit", "回路"],
  area_m2: ["Area", "面积"], level: ["Level", "层级"], code: ["Code", "编码"], parent_code: ["Parent code", "上级编码"],
  responsible_unit: ["Responsible unit", "责任单位"], permit_id: ["Permit", "许可证号"], contractor: ["Contractor", "施工单位"],
  start_date: ["Start", "开工"], end_date: ["End", "完工"], description: ["Works", "工程内容"], source: ["Source", "数据来源"],
  level_m: ["Water level", "水位"],
};

const UNITS = [["_m2", "m²"], ["_mm", "mm"], ["_kmh", "km/h"], ["_kv", "kV"], ["_w", "W"], ["_m", "m"], ["_pct", "%"]];

function chosen() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const asked = hash.get("lang") || localStorage.getItem("twin-lang");
  if (asked === "en" || asked === "zh") return asked;
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}

export let lang = chosen();

export function t(key) {
  return WORDS[lang][key] ?? WORDS.en[key] ?? key;
}

export function pick(both) {
  // {en, zh} -> the current language's text.
  if (!both || typeof both === "string") return both ?? "";
  return both[lang] ?? both.en ?? "";
}

export function fieldName(name) {
  const known = FIELDS[name];
  if (known) return known[lang === "zh" ? 1 : 0];
  return name;
}

export function unitOf(name) {
  for (const [suffix, unit] of UNITS) if (name.endsWith(suffix)) return unit;
  return "";
}

export function setLang(next) {
  lang = next;
  localStorage.setItem("twin-lang", next);
  document.documentElement.lang = next === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
  for (const el of document.querySelectorAll("[data-t-placeholder]")) el.placeholder = t(el.dataset.tPlaceholder);
  for (const el of document.querySelectorAll("[data-t-title]")) el.title = t(el.dataset.tTitle);
}
