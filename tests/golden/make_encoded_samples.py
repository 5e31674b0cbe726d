#!/usr/bin/env python3
"""Write the HL7 v2.5 sample messages of the demo network.

This script is the single source of the sample messages in ``examples/hl7v2/``
and of the golden *inputs* in ``tests/golden/hl7v2/``.  Every message is held
here as Unicode text and is written in the character set that its MSH-18 (or
the sending institution's default from ``seeds/network.yaml``) declares:

* ``GB 18030-2000`` -> GB18030 bytes,
* ``BIG-5``         -> Big5 bytes,
* ``UNICODE UTF-8`` -> UTF-8 bytes.

The committed files must be byte-for-byte what this script writes.

Usage (from anywhere)::

    python tests/golden/make_encoded_samples.py           # (re)write all files
    python tests/golden/make_encoded_samples.py --check   # verify, write nothing

``--check`` exits non-zero if a committed file differs from what would be
written, does not decode with its declared charset, or does not round-trip.
It also lists, per file, the multibyte characters whose trailing byte is an
HL7 delimiter (0x5C ``\\``, 0x7C ``|``, 0x5E ``^``, 0x7E ``~``): those are the
characters a byte-level parser would split or unescape by mistake.

All people, identifiers, addresses and phone numbers are fictional demo data
(see ``seeds/README.md``); only the institution names and the neurologist
刘梅 come from the public news reports the demo network is based on.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "hl7v2"
GOLDEN = ROOT / "tests" / "golden" / "hl7v2"

UTF8 = "UNICODE UTF-8"
GB18030 = "GB 18030-2000"
BIG5 = "BIG-5"

#: MSH-18 value (HL7 table 0211) -> Python codec.
CODECS: dict[str, str] = {UTF8: "utf-8", GB18030: "gb18030", BIG5: "big5"}

#: Bytes that are HL7 delimiters and can also be the trailing byte of a
#: GB18030 or Big5 double-byte character.
DELIMITER_TRAIL_BYTES = {0x5C: "\\", 0x7C: "|", 0x5E: "^", 0x7E: "~"}

MLLP_START = b"\x0b"
MLLP_END = b"\x1c\r"

# HL7 escape sequences used in the free-text (FT/TX) samples.
ESC_F = "\\F\\"  # field separator |
ESC_S = "\\S\\"  # component separator ^
ESC_T = "\\T\\"  # subcomponent separator &
ESC_R = "\\R\\"  # repetition separator ~
ESC_E = "\\E\\"  # escape character \\
ESC_BR = "\\.br\\"  # formatted-text line break
ESC_X0A = "\\X0A\\"  # hex data: LF

# --------------------------------------------------------------------------
# Segment builders
# --------------------------------------------------------------------------


def seg(name: str, fields: Mapping[int, str]) -> str:
    """Build one segment from ``{field number: value}``; gaps become empty."""
    last = max(fields)
    return "|".join([name, *(fields.get(i, "") for i in range(1, last + 1))])


def msh(
    sending_app: str,
    sending_facility: str,
    receiving_app: str,
    receiving_facility: str,
    timestamp: str,
    message_type: str,
    control_id: str,
    country: str,
    charset: str,
) -> str:
    """MSH with MSH-1 ``|``, MSH-2 ``^~\\&``, MSH-11 ``P`` and MSH-12 ``2.5``."""
    fields = {
        3: sending_app,
        4: sending_facility,
        5: receiving_app,
        6: receiving_facility,
        7: timestamp,
        9: message_type,
        10: control_id,
        11: "P",
        12: "2.5",
        15: "AL",
        16: "NE",
        17: country,
        18: charset,
    }
    return "MSH|" + "|".join([r"^~\&", *(fields.get(i, "") for i in range(3, 19))])


# Facilities (MSH-4/MSH-6 HD).  Keys, namespaces and OIDs as in seeds/network.yaml.
NSCH = "NSCH^2.16.156.10011.99.1.1^ISO"
NSGP = "NSGP^2.16.156.10011.99.1.2^ISO"
NJMU2 = "NJMU2^2.16.156.10011.99.1.3^ISO"
LAX2 = "LAX2^2.16.156.10011.99.1.4^ISO"
HKPMC = "HKPMC^1.3.6.1.4.1.99999.1.1^ISO"

# Ordering facility names (XON, assigning authority in XON-6).
NSCH_XON = "广州市第一人民医院南沙医院^^^^^NSCH"
LAX2_XON = "来安县第二人民医院^^^^^LAX2"

# Ordering providers (XCN, assigning authority in XCN-9).
ZHANG_JIANGUO = "D1001^张^建国^^^^^^LAX2"
LIANG_ZHIDONG = "NS0231^梁^志东^^^^^^NSCH"

# Referral roles (HL7 table 0286).
RP = "RP^Referring Provider^HL70286"
RT = "RT^Referred to Provider^HL70286"

# --------------------------------------------------------------------------
# Patients (PID).  Same identifiers as seeds/network.yaml.
# --------------------------------------------------------------------------

# 王伟 (fictional, after the 王伟(化名) of the Lai'an news story), Lai'an.
WANG_WEI_IDS = "0012345^^^LAX2^MR~J20250043^^^NJMU2^MR~341122196604200135^^^CHNRID^NNCHN"
WANG_WEI_PID = seg(
    "PID",
    {
        1: "1",
        3: WANG_WEI_IDS,
        5: "王^伟^^^^^L~WANG^WEI^^^^^A",
        7: "19660420",
        8: "M",
        11: "汊河镇滨河路1号^^滁州市^安徽省^239200^CHN^H^^来安县",
        13: "^PRN^CP^^^^^^^^^+8613900000001",
    },
)

# 許嘉瑋 (HUI Ka Wai): Hong Kong resident living in Nansha.  Mainland systems
# record the name as on the HKID card (Traditional characters).
HUI_PID_FIELDS: dict[int, str] = {
    1: "1",
    5: "許^嘉瑋^^^^^L~HUI^KA WAI^^^^^A",
    7: "19570903",
    8: "M",
    11: (
        "海景路66号3栋1502房^^广州市^广东省^511458^CHN^H^^南沙区"
        "~協和街88號錦東大廈12樓B室^^九龍^香港^^HKG^P^^觀塘區"
    ),
    13: "^PRN^CP^^^^^^^^^+8613900000002~^PRN^CP^^^^^^^^^+85200000002",
}
HUI_HKID = "K583726A^^^HKID^NNHKG"

# 陈志强: Nansha resident; resident ID with check character X.
CHEN_PID = seg(
    "PID",
    {
        1: "1",
        3: "GP0000123^^^NSGP^MR~44011519751130035X^^^CHNRID^NNCHN",
        5: "陈^志强^^^^^L~CHEN^ZHIQIANG^^^^^A",
        7: "19751130",
        8: "M",
        11: "滨海路1号^^广州市^广东省^511458^CHN^H^^南沙区",
        13: "^PRN^CP^^^^^^^^^+8613900000003",
    },
)

# 周秀兰: Lai'an resident.
ZHOU_PID = seg(
    "PID",
    {
        1: "1",
        3: "0012388^^^LAX2^MR~341122195902140244^^^CHNRID^NNCHN",
        5: "周^秀兰^^^^^L~ZHOU^XIULAN^^^^^A",
        7: "19590214",
        8: "F",
        11: "新安镇建设路20号^^滁州市^安徽省^239200^CHN^H^^来安县",
        13: "^PRN^CP^^^^^^^^^+8613900000004",
    },
)

# --------------------------------------------------------------------------
# Providers (PRD) reused by several referrals
# --------------------------------------------------------------------------


def prd(
    role: str,
    name: str,
    address: str,
    location: str,
    phone: str,
    staff_id: str,
    organisation: str,
) -> str:
    """PRD-1..7 and PRD-10 (PRD-10 is a v2.6+ field, sent here on purpose)."""
    return seg(
        "PRD",
        {
            1: role,
            2: name,
            3: address,
            4: location,
            5: phone,
            7: staff_id,
            10: organisation,
        },
    )


NSCH_ADDR = "凤凰大道88号^^广州市^广东省^511458^CHN^O^^南沙区"
NSCH_HKMRC = "HKMRC^^^NSCH^^^^^港澳居民健康服务中心（跨境合作医疗中心）"
NSCH_PHONE = "^WPN^PH^^86^20^00001001"
NSGP_ADDR = "金沙路12号^^广州市^广东省^511458^CHN^O^^南沙区"
NSGP_PHONE = "^WPN^PH^^86^20^00001002"
NJMU2_ADDR = "虎踞北路300号^^南京市^江苏省^210011^CHN^O^^鼓楼区"
NJMU2_PHONE = "^WPN^PH^^86^25^00001003"
LAX2_ADDR = "建设路18号^^滁州市^安徽省^239200^CHN^O^^来安县"
LAX2_PHONE = "^WPN^PH^^86^550^00001004"
HKPMC_ADDR_HANT = "彌敦道888號12樓^^九龍^香港^^HKG^O^^油尖旺區"
HKPMC_PHONE = "^WPN^PH^^852^^00001001"

PRD_HUANG_RP = prd(
    RP,
    "黄^嘉琪^^^^^L~HUANG^JIAQI^^^^^A",
    NSGP_ADDR,
    "GPC^^^NSGP^^^^^港式全科家庭医生诊室",
    NSGP_PHONE,
    "GP0007^PRN^NSGP",
    "南沙港式全科家庭医生诊室^^^^^NSGP",
)
PRD_LIANG_RT = prd(
    RT,
    "梁^志东^^^^^L~LIANG^ZHIDONG^^^^^A",
    NSCH_ADDR,
    NSCH_HKMRC,
    NSCH_PHONE,
    "NS0231^PRN^NSCH",
    NSCH_XON,
)
PRD_ZHAO_RP = prd(
    RP,
    "赵^珅^^^^^L~ZHAO^SHEN^^^^^A",
    LAX2_ADDR,
    "NEU^^^LAX2^^^^^神经内科门诊",
    LAX2_PHONE,
    "D1002^PRN^LAX2",
    LAX2_XON,
)
PRD_LIUMEI_RT = prd(
    RT,
    "刘^梅^^^^^L~LIU^MEI^^^^^A",
    NJMU2_ADDR,
    "NEU^^^NJMU2^^^^^神经内科门诊",
    NJMU2_PHONE,
    "N3021^PRN^NJMU2",
    "南京医科大学第二附属医院^^^^^NJMU2",
)

LAX2_NEU_RF1 = {
    1: "P^待处理^HL70283",
    2: "R^Routine^HL70280",
    3: "Neu^神经内科^99LOCAL",
    4: "RP^Return Patient After Evaluation^HL70282",
    5: "O^Outpatient^HL70284",
    6: "REF20260611001^LAX2",
    7: "20260611",
    8: "20260711",
    9: "20260611",
    10: "O^Provider Ordered^HL70336",
}

# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------

Message = list[str]

# 1. NSGP -> NSCH: HK-style GP clinic refers an HK resident (GB18030).
REF_I12_NSGP_TO_NSCH: Message = [
    msh(
        "NSGP_HIS",
        NSGP,
        "NSCH_HIS",
        NSCH,
        "20260612093015+0800",
        "REF^I12^REF_I12",
        "NSGP20260612093015001",
        "CHN",
        GB18030,
    ),
    seg(
        "RF1",
        {
            1: "P^待处理^HL70283",
            2: "A^ASAP^HL70280",
            3: "Car^心血管内科^99LOCAL",
            4: "RP^Return Patient After Evaluation^HL70282",
            5: "O^Outpatient^HL70284",
            6: "REF20260612001^NSGP",
            7: "20260612",
            8: "20260712",
            9: "20260612",
            10: "O^Provider Ordered^HL70336",
        },
    ),
    PRD_HUANG_RP,
    PRD_LIANG_RT,
    seg("PID", {**HUI_PID_FIELDS, 3: "GP0000088^^^NSGP^MR~" + HUI_HKID}),
    seg("DG1", {1: "1", 3: "R07.4^胸痛^I10", 5: "20260612", 6: "W"}),
    seg("DG1", {1: "2", 3: "I10^原发性高血压^I10", 5: "20260612", 6: "F"}),
    seg("PV1", {1: "1", 2: "O", 3: "GPC^^^NSGP"}),
    seg(
        "NTE",
        {
            1: "1",
            2: "P",
            3: (
                "患者为香港居民（香港身份证姓名：許嘉瑋），现居南沙。近两周活动后胸闷、胸痛，"
                f"休息数分钟可缓解。心电图示V4-V6导联ST段轻度压低。{ESC_BR}"
                f"既往高血压病史5年，规律服用氨氯地平5mg qd。{ESC_BR}"
                "建议心血管内科评估，必要时行冠状动脉CT血管成像（CTA）。"
            ),
        },
    ),
]

# 2. NSCH -> HKPMC: cross-border referral of the same HK resident (UTF-8).
REF_I12_NSCH_TO_HKPMC: Message = [
    msh(
        "NSCH_HIS",
        NSCH,
        "HKPMC_CMS",
        HKPMC,
        "20260618143000+0800",
        "REF^I12^REF_I12",
        "NSCH20260618143000017",
        "CHN",
        UTF8,
    ),
    seg(
        "RF1",
        {
            1: "P^待处理^HL70283",
            2: "A^ASAP^HL70280",
            3: "Car^心血管内科^99LOCAL",
            4: "AM^Assume Management^HL70282",
            5: "O^Outpatient^HL70284",
            6: "REF20260618001^NSCH",
            7: "20260618",
            8: "20260818",
            9: "20260618",
            10: "P^患者意愿：拟返港接受冠状动脉介入治疗^HL70336",
        },
    ),
    prd(
        RP,
        "梁^志东^^^^^L~LIANG^ZHIDONG^^^^^A",
        NSCH_ADDR,
        NSCH_HKMRC,
        NSCH_PHONE,
        "NS0231^PRN^NSCH",
        NSCH_XON,
    ),
    prd(
        RT,
        "彭^耀功^^^^^L~PANG^YIU KUNG^^^^^A",
        HKPMC_ADDR_HANT,
        "CARD^^^HKPMC^^^^^心臟科專科門診",
        HKPMC_PHONE,
        "HK1001^PRN^HKPMC",
        "大灣區醫療集團香港合作醫療中心^^^^^HKPMC",
    ),
    seg("PID", {**HUI_PID_FIELDS, 3: "0098765^^^NSCH^MR~" + HUI_HKID}),
    seg("DG1", {1: "1", 3: "I25.1^冠状动脉粥样硬化性心脏病^I10", 5: "20260616", 6: "F"}),
    seg("DG1", {1: "2", 3: "I10^原发性高血压^I10", 5: "20260612", 6: "F"}),
    seg(
        "OBR",
        {
            1: "1",
            2: "PLC2026061501^NSCH",
            3: "FIL2026061501^NSCH",
            4: "CT101^冠状动脉CT血管成像^99NSCH",
            7: "20260616100000+0800",
            16: LIANG_ZHIDONG,
            18: "NS2026061500017",
            22: "20260616153000+0800",
            24: "CT",
            25: "F",
            32: "NS0415&何&慧敏&&&&&&NSCH",
        },
    ),
    seg(
        "OBX",
        {
            1: "1",
            2: "TX",
            3: "IMP-ZH^影像诊断（中文）^99NSCH",
            5: "前降支近段混合斑块，管腔狭窄约70%；回旋支及右冠状动脉未见明显狭窄。",
            11: "F",
            14: "20260616153000+0800",
        },
    ),
    seg(
        "OBX",
        {
            1: "2",
            2: "TX",
            3: "IMP-EN^Impression (English)^99NSCH",
            5: (
                "Mixed plaque in the proximal LAD with approximately 70% luminal"
                " stenosis; no significant stenosis of the LCX or RCA."
            ),
            11: "F",
            14: "20260616153000+0800",
        },
    ),
    seg("PV1", {1: "1", 2: "O", 3: "HKMRC^^^NSCH"}),
    seg(
        "NTE",
        {
            1: "1",
            2: "P",
            3: (
                f"患者为香港居民，因活动后胸痛经南沙港式全科家庭医生诊室转诊至本院港澳居民健康服务中心。{ESC_BR}"
                "2026-06-16冠状动脉CTA：前降支近段狭窄约70%。已出具中英文双语影像报告，"
                f"经个人信息跨境平台传输，请予结果互认，避免重复检查。{ESC_BR}"
                f"患者本人要求返港接受冠状动脉造影{ESC_T}介入治疗评估。"
            ),
        },
    ),
]

# 3. HKPMC -> NSCH: back-referral (下轉) after PCI, Traditional Chinese (Big5).
REF_I12_HKPMC_TO_NSCH: Message = [
    msh(
        "HKPMC_CMS",
        HKPMC,
        "NSCH_HIS",
        NSCH,
        "20260710103000+0800",
        "REF^I12^REF_I12",
        "HKPMC20260710103000005",
        "HKG",
        BIG5,
    ),
    seg(
        "RF1",
        {
            1: "P^待處理^HL70283",
            2: "R^Routine^HL70280",
            3: "Car^心臟科^99LOCAL",
            4: "AM^Assume Management^HL70282",
            5: "O^Outpatient^HL70284",
            6: "REF20260710001^HKPMC",
            7: "20260710",
            8: "20261010",
            9: "20260710",
            10: "^術後病情穩定，轉回南沙跟進（下轉）",
        },
    ),
    prd(
        RP,
        "彭^耀功^^^^^L~PANG^YIU KUNG^^^^^A",
        HKPMC_ADDR_HANT,
        "CARD^^^HKPMC^^^^^心臟科專科門診",
        HKPMC_PHONE,
        "HK1001^PRN^HKPMC",
        "大灣區醫療集團香港合作醫療中心^^^^^HKPMC",
    ),
    prd(
        RT,
        "梁^志東^^^^^L~LIANG^ZHIDONG^^^^^A",
        "鳳凰大道88號^^廣州市^廣東省^511458^CHN^O^^南沙區",
        "HKMRC^^^NSCH^^^^^港澳居民健康服務中心（跨境合作醫療中心）",
        NSCH_PHONE,
        "NS0231^PRN^NSCH",
        "廣州市第一人民醫院南沙醫院^^^^^NSCH",
    ),
    seg(
        "PID",
        {
            **HUI_PID_FIELDS,
            3: "HKP0012345^^^HKPMC^MR~" + HUI_HKID,
            11: (
                "海景路66號3棟1502室^^廣州市^廣東省^511458^CHN^H^^南沙區"
                "~協和街88號錦東大廈12樓B室^^九龍^香港^^HKG^P^^觀塘區"
            ),
        },
    ),
    seg("DG1", {1: "1", 3: "I25.1^冠狀動脈粥樣硬化性心臟病^I10", 5: "20260625", 6: "F"}),
    seg("DG1", {1: "2", 3: "Z95.5^冠狀動脈支架植入術後狀態^I10", 5: "20260625", 6: "F"}),
    seg("PV1", {1: "1", 2: "O", 3: "CARD^^^HKPMC"}),
    seg(
        "NTE",
        {
            1: "1",
            2: "P",
            3: (
                "患者許嘉瑋於2026-06-25在本中心接受經皮冠狀動脈介入治療（PCI），"
                f"前降支植入藥物洗脫支架1枚，術後恢復良好，心功能穩定（LVEF 58%）。{ESC_BR}"
                "出院用藥：Aspirin 100mg 每日一次、Clopidogrel 75mg 每日一次、"
                f"Atorvastatin 20mg 每晚一次。{ESC_BR}"
                "請南沙中心醫院港澳居民健康服務中心跟進雙抗血小板治療（療程12個月）及心臟康復；"
                f"複查項目：血脂（LDL-C{ESC_F}HDL-C）、肝功能、心電圖。"
            ),
        },
    ),
    seg(
        "NTE",
        {
            1: "2",
            2: "P",
            3: "如胸痛復發，請經跨境雙向轉診綠色通道轉回本中心。聯絡：彭耀功醫生。",
        },
    ),
]

# 4. LAX2 -> NJMU2: stroke follow-up referral to 刘梅 (GB18030).
REF_I12_LAX2_TO_NJMU2: Message = [
    msh(
        "LAX2_HIS",
        LAX2,
        "NJMU2_HIS",
        NJMU2,
        "20260611101500+0800",
        "REF^I12^REF_I12",
        "LAX220260611101500003",
        "CHN",
        GB18030,
    ),
    seg("RF1", LAX2_NEU_RF1),
    PRD_ZHAO_RP,
    PRD_LIUMEI_RT,
    WANG_WEI_PID,
    seg("DG1", {1: "1", 3: "I63.9^脑梗死^I10", 5: "20250520", 6: "F"}),
    seg("PV1", {1: "1", 2: "O", 3: "NEU^^^LAX2"}),
    seg(
        "NTE",
        {
            1: "1",
            2: "P",
            3: (
                f"患者一年前因脑梗死于南京医科大学第二附属医院行介入治疗，术后恢复良好，现需神经内科复查。{ESC_BR}"
                f"目前用药：阿司匹林100mg qd {ESC_F} 阿托伐他汀20mg qn；"
                f"体重指数24.5 kg/m{ESC_S}2。{ESC_BR}"
                f"2026-06-10本院头颅CT平扫（检查号LA2026061000001），阅片医师：孙昞{ESC_BR}"
                "影像所见：左侧基底节区陈旧性腔隙性梗死灶，未见新发出血。请予检查结果互认。"
            ),
        },
    ),
    seg(
        "NTE",
        {
            1: "2",
            2: "P",
            3: (
                "可安排于刘梅主任每周三来安县第二人民医院专家门诊复查，"
                f"或至南京医科大学第二附属医院神经内科门诊。{ESC_X0A}转诊医师：赵珅"
            ),
        },
    ),
]

# 5. LAX2 cancels referral REF20260611001 (REF^I14, UTF-8).
REF_I14_LAX2_CANCEL: Message = [
    msh(
        "LAX2_HIS",
        LAX2,
        "NJMU2_HIS",
        NJMU2,
        "20260617163000+0800",
        "REF^I14^REF_I12",
        "LAX220260617163000011",
        "CHN",
        UTF8,
    ),
    seg("RF1", {**LAX2_NEU_RF1, 9: "20260617"}),
    PRD_ZHAO_RP,
    PRD_LIUMEI_RT,
    WANG_WEI_PID,
    seg("DG1", {1: "1", 3: "I63.9^脑梗死^I10", 5: "20250520", 6: "F"}),
    seg(
        "NTE",
        {
            1: "1",
            2: "P",
            3: (
                "取消原因：2026-06-17（周三）刘梅主任在来安县第二人民医院专家门诊坐诊时"
                "已为患者完成复查，病情稳定，无需转诊至南京，撤销本次转诊申请。"
            ),
        },
    ),
]


def lax2_ct_order(
    number: str,
    exam: str,
    when: str,
    clinical_info: str,
    accession: str,
    reason: str,
    entered: str = "20260610083000+0800",
    placer_group: str = "PG0001^LAX2",
    set_id: str = "1",
) -> list[str]:
    """One ORC/OBR order group of an ORM^O01 from the Lai'an HIS."""
    placer = f"PLC{number}^LAX2"
    filler = f"FIL{number}^LAX2"
    return [
        seg(
            "ORC",
            {
                1: "NW",
                2: placer,
                3: filler,
                4: placer_group,
                5: "SC",
                9: entered,
                12: ZHANG_JIANGUO,
                21: LAX2_XON,
            },
        ),
        seg(
            "OBR",
            {
                1: set_id,
                2: placer,
                3: filler,
                4: exam,
                5: "R",
                7: when,
                13: clinical_info,
                16: ZHANG_JIANGUO,
                18: accession,
                24: "CT",
                27: f"1^ONCE^^{when}^^R",
                31: reason,
            },
        ),
    ]


HEAD_CT = "CT001^头颅CT平扫^99LAX2"  # LOINC 30799-1 CT Head WO contrast
CHEST_CT = "CT002^胸部CT平扫^99LAX2"  # LOINC 29252-4 CT Chest WO contrast

# 6. ORM^O01 at Lai'an: head CT + chest CT for 王伟 (UTF-8).
ORM_O01_LAX2_CT: Message = [
    msh(
        "LAX2_HIS",
        LAX2,
        "LAX2_RIS",
        LAX2,
        "20260610083000+0800",
        "ORM^O01^ORM_O01",
        "LAX220260610083000001",
        "CHN",
        UTF8,
    ),
    WANG_WEI_PID,
    seg("PV1", {1: "1", 2: "O", 3: "NEU^^^LAX2", 7: ZHANG_JIANGUO}),
    *lax2_ct_order(
        "0001",
        HEAD_CT,
        "20260610090000+0800",
        "脑梗死介入术后1年复查，近期偶有头晕",
        "LA2026061000001",
        "I63.9^脑梗死^I10",
    ),
    seg("NTE", {1: "1", 2: "P", 3: "患者可自行步行，无需陪检。"}),
    *lax2_ct_order(
        "0002",
        CHEST_CT,
        "20260610091500+0800",
        "咳嗽2周，吸烟史30年",
        "LA2026061000002",
        "R05^咳嗽^I10",
        set_id="2",
    ),
]

# 7. OMG^O19 at NSCH: 24-hour Holter ECG after the back-referral (UTF-8).
OMG_O19_NSCH: Message = [
    msh(
        "NSCH_HIS",
        NSCH,
        "NSCH_ECG",
        NSCH,
        "20260715091000+0800",
        "OMG^O19^OMG_O19",
        "NSCH20260715091000042",
        "CHN",
        UTF8,
    ),
    seg("PID", {**HUI_PID_FIELDS, 3: "0098765^^^NSCH^MR~" + HUI_HKID}),
    seg("PV1", {1: "1", 2: "O", 3: "HKMRC^^^NSCH", 7: LIANG_ZHIDONG}),
    seg(
        "ORC",
        {
            1: "NW",
            2: "PLC2026071501^NSCH",
            5: "SC",
            9: "20260715091000+0800",
            12: LIANG_ZHIDONG,
            21: NSCH_XON,
        },
    ),
    seg(
        "TQ1",
        {
            1: "1",
            2: "1",
            6: "24^h&hour&UCUM",
            7: "20260716083000+0800",
            8: "20260717083000+0800",
            9: "R^Routine^HL70485",
        },
    ),
    seg(
        "OBR",
        {
            1: "1",
            2: "PLC2026071501^NSCH",
            4: "ECG002^24小时动态心电图^99NSCH",
            5: "R",
            7: "20260716083000+0800",
            13: "PCI术后随访，评估心律失常及心肌缺血",
            16: LIANG_ZHIDONG,
            24: "EC",
            27: "1^ONCE^^20260716083000+0800^^R",
            31: "I25.1^冠状动脉粥样硬化性心脏病^I10",
        },
    ),
    seg(
        "NTE",
        {
            1: "1",
            2: "P",
            3: (
                "请于2026-07-16 08:30至心电图室佩戴动态心电图记录仪，"
                f"佩戴期间避免洗澡及靠近强磁场。{ESC_BR}"
                f"记录时段：08:30{ESC_R}次日08:30；如有胸痛请记录发作时间{ESC_T}症状。"
            ),
        },
    ),
    seg("DG1", {1: "1", 3: "Z95.5^冠状动脉支架植入术后状态^I10", 5: "20260710", 6: "W"}),
]

# 8. OMI^O23 at NSCH: coronary CT angiography with IPC (UTF-8).
OMI_O23_NSCH_CT: Message = [
    msh(
        "NSCH_HIS",
        NSCH,
        "NSCH_RIS",
        NSCH,
        "20260615101500+0800",
        "OMI^O23^OMI_O23",
        "NSCH20260615101500021",
        "CHN",
        UTF8,
    ),
    seg("PID", {**HUI_PID_FIELDS, 3: "0098765^^^NSCH^MR~" + HUI_HKID}),
    seg("PV1", {1: "1", 2: "O", 3: "HKMRC^^^NSCH", 7: LIANG_ZHIDONG}),
    seg(
        "ORC",
        {
            1: "NW",
            2: "PLC2026061501^NSCH",
            3: "FIL2026061501^NSCH",
            5: "SC",
            9: "20260615101500+0800",
            12: LIANG_ZHIDONG,
            21: NSCH_XON,
        },
    ),
    seg(
        "TQ1",
        {1: "1", 2: "1", 7: "20260616100000+0800", 9: "A^ASAP^HL70485"},
    ),
    seg(
        "OBR",
        {
            1: "1",
            2: "PLC2026061501^NSCH",
            3: "FIL2026061501^NSCH",
            4: "CT101^冠状动脉CT血管成像^99NSCH",
            5: "A",
            7: "20260616100000+0800",
            13: "活动后胸痛2周，心电图ST段轻度压低；碘对比剂过敏史：无",
            16: LIANG_ZHIDONG,
            18: "NS2026061500017",
            24: "CT",
            27: "1^ONCE^^20260616100000+0800^^A",
            31: "R07.4^胸痛^I10",
        },
    ),
    seg(
        "NTE",
        {
            1: "1",
            2: "P",
            3: (
                f"检查前4小时禁食；心率>70次/分时遵医嘱口服美托洛尔。{ESC_BR}"
                f"图像归档至 {ESC_E}{ESC_E}nsch-pacs{ESC_E}cta；双语报告需香港医师审片。"
            ),
        },
    ),
    seg(
        "IPC",
        {
            1: "NS2026061500017^NSCH",
            2: "RP2026061501^NSCH",
            3: "2.16.156.10011.99.1.1.3.20260615.17",
            4: "SPS2026061501^NSCH",
            5: "CT^Computed Tomography^DCM",
            7: "CT01^NSCH",
            8: "CTROOM1^放射科CT1室^99NSCH",
            9: "NSCH_CT01",
        },
    ),
]

# 9. Batch file from Lai'an: good REF^I12, broken ORM^O01, good ORM^O01 (UTF-8).
BATCH_REF_I12_ZHOU: Message = [
    msh(
        "LAX2_HIS",
        LAX2,
        "NJMU2_HIS",
        NJMU2,
        "20260622090000+0800",
        "REF^I12^REF_I12",
        "LAX220260622090000001",
        "CHN",
        UTF8,
    ),
    seg(
        "RF1",
        {
            1: "P^待处理^HL70283",
            2: "R^Routine^HL70280",
            3: "End^内分泌科^99LOCAL",
            4: "RP^Return Patient After Evaluation^HL70282",
            5: "O^Outpatient^HL70284",
            6: "REF20260622001^LAX2",
            7: "20260622",
            8: "20260722",
            9: "20260622",
            10: "O^Provider Ordered^HL70336",
        },
    ),
    prd(
        RP,
        "张^建国^^^^^L~ZHANG^JIANGUO^^^^^A",
        LAX2_ADDR,
        "IM^^^LAX2^^^^^内科门诊",
        LAX2_PHONE,
        "D1001^PRN^LAX2",
        LAX2_XON,
    ),
    prd(
        RT,
        "吴^晓燕^^^^^L~WU^XIAOYAN^^^^^A",
        NJMU2_ADDR,
        "END^^^NJMU2^^^^^内分泌科门诊",
        NJMU2_PHONE,
        "N3188^PRN^NJMU2",
        "南京医科大学第二附属医院^^^^^NJMU2",
    ),
    ZHOU_PID,
    seg("DG1", {1: "1", 3: "E11.9^2型糖尿病^I10", 5: "20180305", 6: "F"}),
    seg("PV1", {1: "1", 2: "O", 3: "IM^^^LAX2"}),
    seg(
        "NTE",
        {
            1: "1",
            2: "P",
            3: (
                "2型糖尿病8年，口服二甲双胍及格列美脲，近3个月空腹血糖9-11 mmol/L，"
                "糖化血红蛋白8.6%，建议内分泌科调整降糖方案。"
            ),
        },
    ),
]
# Deliberately broken: the PID is misspelt "P1D" and cut off mid-name, and
# the OBR has no ORC before it.
BATCH_BROKEN_ORM: Message = [
    msh(
        "LAX2_HIS",
        LAX2,
        "LAX2_RIS",
        LAX2,
        "20260622090500+0800",
        "ORM^O01^ORM_O01",
        "LAX220260622090500002",
        "CHN",
        UTF8,
    ),
    "P1D|1||0012345^^^LAX2^MR||王^",
    seg(
        "OBR",
        {1: "1", 2: "PLC0003^LAX2", 4: "CT001^头颅CT平扫^99LAX2", 5: "R"},
    ),
]
BATCH_ORM_ZHOU: Message = [
    msh(
        "LAX2_HIS",
        LAX2,
        "LAX2_RIS",
        LAX2,
        "20260622091000+0800",
        "ORM^O01^ORM_O01",
        "LAX220260622091000003",
        "CHN",
        UTF8,
    ),
    ZHOU_PID,
    seg("PV1", {1: "1", 2: "O", 3: "IM^^^LAX2", 7: ZHANG_JIANGUO}),
    *lax2_ct_order(
        "0004",
        CHEST_CT,
        "20260622100000+0800",
        "咳嗽3周，无发热",
        "LA2026062200001",
        "R05^咳嗽^I10",
        entered="20260622091000+0800",
        placer_group="PG0004^LAX2",
    ),
]

# 10. MLLP-framed REF^I12 NSGP -> NSCH for 陈志强 (UTF-8 declared explicitly,
# overriding the clinic's GB18030 default).
MLLP_REF_I12_CHEN: Message = [
    msh(
        "NSGP_HIS",
        NSGP,
        "NSCH_HIS",
        NSCH,
        "20260619110000+0800",
        "REF^I12^REF_I12",
        "NSGP20260619110000002",
        "CHN",
        UTF8,
    ),
    seg(
        "RF1",
        {
            1: "P^待处理^HL70283",
            2: "R^Routine^HL70280",
            3: "Car^心血管内科^99LOCAL",
            4: "RP^Return Patient After Evaluation^HL70282",
            5: "O^Outpatient^HL70284",
            6: "REF20260619001^NSGP",
            7: "20260619",
            8: "20260719",
            9: "20260619",
            10: "^血压控制不佳，请专科调整用药",
        },
    ),
    PRD_HUANG_RP,
    PRD_LIANG_RT,
    CHEN_PID,
    seg("DG1", {1: "1", 3: "I10^原发性高血压^I10", 5: "20260619", 6: "F"}),
    seg("PV1", {1: "1", 2: "O", 3: "GPC^^^NSGP"}),
    seg(
        "NTE",
        {
            1: "1",
            2: "P",
            3: "联合用药（氨氯地平+缬沙坦）下诊室血压仍波动于160-170/95-100 mmHg。",
        },
    ),
]

# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One file: one or more messages in one charset, optionally MLLP-framed."""

    messages: Sequence[Message]
    charset: str
    mllp: bool = False

    @property
    def codec(self) -> str:
        return CODECS[self.charset]

    def text(self) -> str:
        """The file as Unicode text (segments terminated by CR)."""
        return "".join(s + "\r" for m in self.messages for s in m)

    def encode(self) -> bytes:
        body = self.text().encode(self.codec)
        return MLLP_START + body + MLLP_END if self.mllp else body


S_NSGP_TO_NSCH = Sample([REF_I12_NSGP_TO_NSCH], GB18030)
S_NSCH_TO_HKPMC = Sample([REF_I12_NSCH_TO_HKPMC], UTF8)
S_HKPMC_TO_NSCH = Sample([REF_I12_HKPMC_TO_NSCH], BIG5)
S_LAX2_TO_NJMU2 = Sample([REF_I12_LAX2_TO_NJMU2], GB18030)
S_LAX2_CANCEL = Sample([REF_I14_LAX2_CANCEL], UTF8)
S_ORM = Sample([ORM_O01_LAX2_CT], UTF8)
S_OMG = Sample([OMG_O19_NSCH], UTF8)
S_OMI = Sample([OMI_O23_NSCH_CT], UTF8)
S_BATCH = Sample([BATCH_REF_I12_ZHOU, BATCH_BROKEN_ORM, BATCH_ORM_ZHOU], UTF8)
S_MLLP = Sample([MLLP_REF_I12_CHEN], UTF8, mllp=True)

FILES: dict[Path, Sample] = {
    EXAMPLES / "ref_i12_nsgp_to_nsch.hl7": S_NSGP_TO_NSCH,
    EXAMPLES / "ref_i12_nsch_to_hkpmc.hl7": S_NSCH_TO_HKPMC,
    EXAMPLES / "ref_i12_hkpmc_to_nsch.hl7": S_HKPMC_TO_NSCH,
    EXAMPLES / "ref_i12_lax2_to_njmu2.hl7": S_LAX2_TO_NJMU2,
    EXAMPLES / "ref_i14_lax2_cancel.hl7": S_LAX2_CANCEL,
    EXAMPLES / "orm_o01_lax2_ct.hl7": S_ORM,
    EXAMPLES / "omg_o19_nsch.hl7": S_OMG,
    EXAMPLES / "omi_o23_nsch_ct.hl7": S_OMI,
    EXAMPLES / "batch_mixed.hl7": S_BATCH,
    EXAMPLES / "mllp_ref_i12.hl7": S_MLLP,
    GOLDEN / "ref_i12_gb18030.hl7": S_LAX2_TO_NJMU2,
    GOLDEN / "ref_i12_gb18030_gp.hl7": S_NSGP_TO_NSCH,
    GOLDEN / "ref_i12_big5.hl7": S_HKPMC_TO_NSCH,
    GOLDEN / "ref_i12_utf8.hl7": S_NSCH_TO_HKPMC,
    GOLDEN / "ref_i14_cancel.hl7": S_LAX2_CANCEL,
    GOLDEN / "orm_o01_two_orders.hl7": S_ORM,
    GOLDEN / "omg_o19.hl7": S_OMG,
    GOLDEN / "omi_o23.hl7": S_OMI,
    GOLDEN / "batch_mixed.hl7": S_BATCH,
    GOLDEN / "mllp_ref_i12.hl7": S_MLLP,
}

# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------


def delimiter_trail_chars(text: str, codec: str) -> list[str]:
    """Characters of ``text`` whose encoding ends in an HL7 delimiter byte."""
    found: list[str] = []
    for ch in dict.fromkeys(text):
        raw = ch.encode(codec)
        if len(raw) > 1 and raw[-1] in DELIMITER_TRAIL_BYTES and ch not in found:
            found.append(ch)
    return found


def problems(path: Path, sample: Sample) -> list[str]:
    """Everything wrong with the committed file at ``path``; empty if fine."""
    if not path.is_file():
        return ["missing"]
    data = path.read_bytes()
    errors: list[str] = []
    if data != sample.encode():
        errors.append("differs from what this script writes")
    body = data
    if sample.mllp:
        if not (data.startswith(MLLP_START) and data.endswith(MLLP_END)):
            errors.append("MLLP framing missing")
        body = data[len(MLLP_START) : -len(MLLP_END)]
    try:
        text = body.decode(sample.codec)
    except UnicodeDecodeError as exc:
        return [*errors, f"does not decode as {sample.codec}: {exc}"]
    if text.encode(sample.codec) != body:
        errors.append(f"does not round-trip through {sample.codec}")
    for segment in text.split("\r"):
        if segment.startswith("MSH|") and segment.split("|")[17] != sample.charset:
            errors.append(f"MSH-18 is not {sample.charset!r}")
    return errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="verify the committed files instead of writing them",
    )
    args = parser.parse_args(argv)
    if not args.check:
        encoded = {path: sample.encode() for path, sample in FILES.items()}  # fail before writing
        for path, data in encoded.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            print(f"wrote {path.relative_to(ROOT)} ({FILES[path].codec})")
        return 0
    failed = 0
    for path, sample in FILES.items():
        rel = path.relative_to(ROOT)
        errors = problems(path, sample)
        tricky = ""
        if sample.codec != "utf-8":
            chars = delimiter_trail_chars(sample.text(), sample.codec)
            tricky = " delimiter-trail chars: " + "".join(chars)
        status = "FAIL " + "; ".join(errors) if errors else "ok"
        print(f"{status}: {rel} ({sample.codec}){tricky}")
        failed += bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
