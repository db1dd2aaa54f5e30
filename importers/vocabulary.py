"""The words cities use for the same thing: synonyms of each enumerated field's choices.

`sanitary`, `SAN`, `combined`, `domestic` and `污水` all mean the `sewer` network; `ACT`
and `IN_SERVICE` both mean in service. Each vocabulary has exact synonyms (after folding case,
spaces, `_`, `-`, `/` and `.`) and then ordered keyword rules for longer phrases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from layers.schemas import ASSET_STATUS, GRID_LEVELS, NETWORKS

_FOLD = re.compile(r"[\s_\-/.]+")


def fold(value: str) -> str:
    """Lower-case with runs of spaces and `_ - / .` made one space, trimmed."""
    return _FOLD.sub(" ", value.strip().lower()).strip()


# Values that mean "not known", in any field (compared after `fold`).
UNKNOWN = frozenset(
    {
        "",
        "?",
        "??",
        "???",
        "`",
        "unk",
        "unkn",
        "unknown",
        "not known",
        "n a",
        "na",
        "null",
        "none",
        "nil",
        "tbd",
        "tba",
        "未知",
        "不详",
        "无",
    }
)

TRUE_WORDS = frozenset(
    {"true", "t", "yes", "y", "1", "-1", "on", "open", "opened", "o", "normally open", "是", "开"}
)
FALSE_WORDS = frozenset(
    {
        "false",
        "f",
        "no",
        "n",
        "0",
        "off",
        "closed",
        "close",
        "shut",
        "c",
        "normally closed",
        "否",
        "关",
    }
)


@dataclass(frozen=True)
class Vocabulary:
    """Synonyms of an enumeration's choices."""

    choices: tuple[str, ...]
    exact: dict[str, str] = field(default_factory=dict)
    keywords: tuple[tuple[str, str], ...] = ()

    def normalise(self, value: str) -> str | None:
        """The canonical choice `value` means, or None when it is not recognised."""
        key = fold(value)
        for choice in self.choices:
            if key == fold(choice):
                return choice
        if key in self.exact:
            return self.exact[key]
        for word, choice in self.keywords:
            if word in key:
                return choice
        return None


def _synonyms(table: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {fold(word): choice for choice, words in table.items() for word in words}


NETWORK = Vocabulary(
    NETWORKS,
    _synonyms(
        {
            "water": (
                "potable",
                "drinking water",
                "domestic water",
                "wat",
                "w",
                "dw",
                "pw",
                "watermain",
                "water main",
                "fresh water",
                "raw water",
                "给水",
                "供水",
                "自来水",
            ),
            "sewer": (
                "sanitary",
                "san",
                "sanp",
                "ss",
                "sanitary sewer",
                "combined",
                "com",
                "comp",
                "cmb",
                "combined sewer",
                "cso",
                "domestic",
                "dom",
                "foul",
                "fw",
                "wastewater",
                "waste water",
                "ww",
                "sewage",
                "effluent",
                "污水",
                "雨污合流",
                "合流",
            ),
            "storm": (
                "stm",
                "stmp",
                "st",
                "sd",
                "storm sewer",
                "stormwater",
                "storm water",
                "drainage",
                "drain",
                "surface water",
                "sw",
                "rain",
                "rainwater",
                "culvert",
                "雨水",
            ),
            "gas": ("natural gas", "ng", "g", "燃气", "天然气", "煤气"),
            "heat": ("heating", "district heating", "dh", "steam", "hot water", "热力", "供热"),
            "reclaimed": (
                "reclaimed water",
                "recycled",
                "recycled water",
                "rw",
                "purple",
                "non potable",
                "中水",
                "再生水",
            ),
        }
    ),
    (
        ("storm", "storm"),
        ("rain", "storm"),
        ("sanit", "sewer"),
        ("combined", "sewer"),
        ("sewage", "sewer"),
        ("waste", "sewer"),
        ("foul", "sewer"),
        ("sewer", "sewer"),
        ("domestic", "sewer"),
        ("合流", "sewer"),
        ("污水", "sewer"),
        ("雨水", "storm"),
        ("reclaim", "reclaimed"),
        ("recycl", "reclaimed"),
        ("中水", "reclaimed"),
        ("再生水", "reclaimed"),
        ("gas", "gas"),
        ("燃气", "gas"),
        ("煤气", "gas"),
        ("steam", "heat"),
        ("heat", "heat"),
        ("热", "heat"),
        ("water", "water"),
        ("给水", "water"),
        ("供水", "water"),
    ),
)

STATUS = Vocabulary(
    ASSET_STATUS,
    _synonyms(
        {
            "in_service": (
                "in service",
                "inservice",
                "active",
                "act",
                "a",
                "existing",
                "exist",
                "ex",
                "operational",
                "operating",
                "in use",
                "inuse",
                "built",
                "constructed",
                "open",
                "current",
                "在用",
                "使用中",
                "运行",
                "正常",
            ),
            "planned": (
                "plan",
                "proposed",
                "prop",
                "design",
                "designed",
                "future",
                "规划",
                "拟建",
                "设计",
            ),
            "under_construction": ("construction", "uc", "constr", "building", "在建", "施工"),
            "abandoned": (
                "aban",
                "abn",
                "abd",
                "inactive",
                "disused",
                "retired",
                "out of service",
                "oos",
                "decommissioned",
                "dead",
                "idle",
                "废弃",
                "停用",
                "弃用",
            ),
            "removed": ("rem", "demolished", "deleted", "拆除", "已拆除"),
        }
    ),
    (
        ("abandon", "abandoned"),
        ("decommission", "abandoned"),
        ("under constr", "under_construction"),
        ("propos", "planned"),
        ("remov", "removed"),
        ("demol", "removed"),
        ("in service", "in_service"),
    ),
)

VALVE_KIND = Vocabulary(
    ("valve", "hydrant", "meter", "pump"),
    _synonyms(
        {
            "hydrant": ("fire hydrant", "fh", "hyd", "消火栓", "消防栓"),
            "valve": ("gv", "bv", "prv", "阀门", "阀"),
            "meter": ("水表", "流量计"),
            "pump": ("booster", "泵", "泵站"),
        }
    ),
    (
        ("hydrant", "hydrant"),
        ("消火栓", "hydrant"),
        ("消防栓", "hydrant"),
        ("valve", "valve"),
        ("阀", "valve"),
        ("meter", "meter"),
        ("表", "meter"),
        ("pump", "pump"),
        ("泵", "pump"),
    ),
)

LIGHT_STATUS = Vocabulary(
    ("on", "off", "fault"),
    _synonyms(
        {
            "on": ("lit", "working", "ok", "normal", "operational", "active", "亮", "开", "正常"),
            "off": ("dark", "关", "灭"),
            "fault": (
                "faulty",
                "broken",
                "out",
                "outage",
                "failed",
                "failure",
                "defective",
                "needs repair",
                "repair",
                "故障",
                "损坏",
            ),
        }
    ),
    (("fault", "fault"), ("fail", "fault"), ("broken", "fault"), ("repair", "fault")),
)

GRID_LEVEL = Vocabulary(
    GRID_LEVELS,
    _synonyms(
        {
            "district": ("区", "县", "区县", "市辖区", "borough"),
            "street": ("subdistrict", "sub district", "街道", "街", "镇", "乡", "township", "town"),
            "community": ("社区", "村", "居委会", "neighbourhood", "neighborhood", "village"),
            "cell": ("grid", "grid cell", "网格", "单元网格"),
        }
    ),
    (
        ("社区", "community"),
        ("居委", "community"),
        ("网格", "cell"),
        ("街道", "street"),
        ("镇", "street"),
        ("乡", "street"),
        ("村", "community"),
        ("区", "district"),
        ("县", "district"),
    ),
)

_BY_CHOICES = {v.choices: v for v in (NETWORK, STATUS, VALVE_KIND, LIGHT_STATUS, GRID_LEVEL)}


def vocabulary(choices: tuple[str, ...]) -> Vocabulary:
    """The vocabulary of an enumeration (a plain one, matching the choices only, if unknown)."""
    return _BY_CHOICES.get(tuple(choices)) or Vocabulary(tuple(choices))


def boolean(value: str) -> bool | None:
    """True/False for the words cities use for yes/no and open/closed; None when unknown."""
    key = fold(value)
    if key in TRUE_WORDS:
        return True
    if key in FALSE_WORDS:
        return False
    return None
